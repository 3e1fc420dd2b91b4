"""huggingface_example: A Flower / Hugging Face app."""

from typing import Any

import torch
from datasets.utils.logging import disable_progress_bar
from evaluate import load as load_metric
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
)

disable_progress_bar()


# Data loading (changed from Flower's example: no dataset hub here). Synthetic tokenised batches of the format
# the original DataLoaders yield after DataCollatorWithPadding: {"input_ids": int64 [B, L] below the model's
# vocabulary size, "attention_mask": int64 [B, L] (1 up to each example's length, then 0 as padding),
# "labels": int64 [B] in {0, 1}}; each partition 80% train, 20% test.
PARTITION_SIZE = 20
SEQ_LEN = 16


def load_data(
    partition_id: int, num_partitions: int, model_name: str
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Load synthetic tokenised data (training and eval)"""
    vocab_size = AutoConfig.from_pretrained(model_name).vocab_size
    g = torch.Generator().manual_seed(1000 + partition_id)
    labels = torch.randint(0, 2, (PARTITION_SIZE,), generator=g)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (PARTITION_SIZE,), generator=g)
    attention_mask = (torch.arange(SEQ_LEN) < lengths[:, None]).long()
    # token ids from a label-dependent half of the vocabulary (ids 0..4 left as special tokens)
    half = (vocab_size - 5) // 2
    input_ids = 5 + labels[:, None] * half + torch.randint(0, half, (PARTITION_SIZE, SEQ_LEN), generator=g)
    input_ids = input_ids * attention_mask  # padding id 0
    partition = [{"input_ids": input_ids[i], "attention_mask": attention_mask[i], "labels": labels[i]}
                 for i in range(PARTITION_SIZE)]
    # Divide data: 80% train, 20% test
    split = int(0.8 * PARTITION_SIZE)
    trainloader = DataLoader(partition[:split], shuffle=True, batch_size=32)
    testloader = DataLoader(partition[split:], batch_size=32)
    return trainloader, testloader


def get_model(model_name):
    return AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=2)


def train_fn(net, trainloader, epochs, device) -> None:
    optimizer = AdamW(net.parameters(), lr=5e-5)
    net.train()
    for _ in range(epochs):
        for batch in trainloader:
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = net(**batch)
            loss = outputs.loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()


def test_fn(net, testloader, device) -> tuple[Any | float, Any]:
    metric = load_metric("accuracy")
    loss = 0
    net.eval()
    for batch in testloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            outputs = net(**batch)
        logits = outputs.logits
        loss += outputs.loss.item()
        predictions = torch.argmax(logits, dim=-1)
        metric.add_batch(predictions=predictions, references=batch["labels"])
    loss /= len(testloader.dataset)
    accuracy = metric.compute()["accuracy"]
    return loss, accuracy
