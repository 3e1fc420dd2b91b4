"""pytorch-example: A Flower / PyTorch app."""

import json
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from flwr.app.user_config import UserConfig  # [changed: flwr.common.typing no longer exports it]
from torch.utils.data import DataLoader


class Net(nn.Module):
    """Model (simple CNN adapted for Fashion-MNIST)"""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 32 * 4 * 4)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["image"]
            labels = batch["label"]
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()

    avg_trainloss = running_loss / len(trainloader)
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["image"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy


# Data loading (changed from Flower's example: no dataset hub here). Synthetic tensors of the format the
# original DataLoaders yield: batches {"image": float32 [B, 1, 28, 28] (as ToTensor + Normalize give),
# "label": int64 [B] in 0..9}; each partition 80% train (batch size 32, shuffled), 20% test.
PARTITION_SIZE = 40
CENTRALIZED_SIZE = 64


def _synthetic_fashion_mnist(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 1, 28, 28, generator=g) - 0.1307) / 0.3081
    return [{"image": images[i], "label": labels[i]} for i in range(n)]


def load_data(partition_id: int, num_partitions: int):
    """Load partition data (synthetic, FashionMNIST format)."""
    partition = _synthetic_fashion_mnist(PARTITION_SIZE, seed=1000 + partition_id)
    # Divide data on each node: 80% train, 20% test
    split = int(0.8 * PARTITION_SIZE)
    trainloader = DataLoader(partition[:split], batch_size=32, shuffle=True)
    testloader = DataLoader(partition[split:], batch_size=32)
    return trainloader, testloader


def load_centralized_dataset():
    """The server's test set (synthetic, FashionMNIST format)."""
    return DataLoader(_synthetic_fashion_mnist(CENTRALIZED_SIZE, seed=0), batch_size=32)


def create_run_dir(config: UserConfig) -> tuple[Path, str]:
    """Create a directory where to save results from this run."""
    # Create output directory given current timestamp
    current_time = datetime.now()
    run_dir = current_time.strftime("%Y-%m-%d/%H-%M-%S")
    # Save path is based on the current directory
    save_path = Path.cwd() / f"outputs/{run_dir}"
    save_path.mkdir(parents=True, exist_ok=False)

    # Save run config as json
    with open(f"{save_path}/run_config.json", "w", encoding="utf-8") as fp:
        json.dump(config, fp)

    return save_path, run_dir
