"""pytorchexample: A Flower / PyTorch app."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# Data loading (changed from Flower's example: no dataset hub here). Synthetic tensors of the format the
# original DataLoaders yield: batches {"img": float32 [B, 3, 32, 32] in [-1, 1] (as ToTensor + Normalize(0.5, 0.5)
# give), "label": int64 [B] in 0..9}; each partition 80% train, 20% test.
PARTITION_SIZE = 40
CENTRALIZED_SIZE = 64


def _synthetic_cifar10(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    imgs = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    return [{"img": imgs[i], "label": labels[i]} for i in range(n)]


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """Load partition data (synthetic, CIFAR-10 format)."""
    partition = _synthetic_cifar10(PARTITION_SIZE, seed=1000 + partition_id)
    # Divide data on each node: 80% train, 20% test
    split = int(0.8 * PARTITION_SIZE)
    trainloader = DataLoader(partition[:split], batch_size=batch_size, shuffle=True)
    testloader = DataLoader(partition[split:], batch_size=batch_size)
    return trainloader, testloader


def load_centralized_dataset():
    """Load test set and return dataloader (synthetic, CIFAR-10 format)."""
    return DataLoader(_synthetic_cifar10(CENTRALIZED_SIZE, seed=0), batch_size=128)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
