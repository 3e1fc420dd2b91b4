"""pytorchexample: A Flower / PyTorch app."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam, FedAvg  # [changed]

from fl_userdp.server.dropin import UserDP, UserDPFedAvg  # [changed]

from pytorchexample.task import Net, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    fraction_evaluate: float = context.run_config["fraction-evaluate"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["learning-rate"]

    # Load global model
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # Initialize FedAvg strategy
    # [changed: the one strategy line, in four variants chosen by the run config's strategy-variant]
    dp = {k[3:]: v for k, v in context.run_config.items() if k.startswith("dp-")}
    if context.run_config["strategy-variant"] == "userdp":
        strategy = UserDPFedAvg(sampling_rate=dp["sampling-rate"], noise_multiplier=dp["noise-multiplier"], clipping_norm=dp["clipping-norm"], delta=dp["delta"], seed=dp["seed"])
    elif context.run_config["strategy-variant"] == "userdp-fedadam":
        strategy = UserDP(FedAdam(fraction_evaluate=fraction_evaluate), sampling_rate=dp["sampling-rate"], noise_multiplier=dp["noise-multiplier"], clipping_norm=dp["clipping-norm"], delta=dp["delta"], seed=dp["seed"])
    elif context.run_config["strategy-variant"] == "flower-dp":
        strategy = DifferentialPrivacyServerSideFixedClipping(FedAvg(fraction_train=dp["sampling-rate"], fraction_evaluate=fraction_evaluate), noise_multiplier=dp["noise-multiplier"], clipping_norm=dp["clipping-norm"], num_sampled_clients=dp["num-sampled-clients"])
    else:
        strategy = FedAvg(fraction_evaluate=fraction_evaluate)

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    # Save final model to disk
    print("\nSaving final model to disk...")
    state_dict = result.arrays.to_torch_state_dict()
    torch.save(state_dict, "final_model.pt")


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate model on central data."""

    # Load the model and initialize it with the received weights
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)

    # Load entire test set
    test_dataloader = load_centralized_dataset()

    # Evaluate the global model on the test set
    test_loss, test_acc = test(model, test_dataloader, device)

    # Return the evaluation metrics
    return MetricRecord({"accuracy": test_acc, "loss": test_loss})
