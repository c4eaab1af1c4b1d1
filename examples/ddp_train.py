"""Train a tiny model from S3 shards with DDP on CPU (gloo), checkpointing the model and the loader's
mid-epoch state to S3, and resume from it.

    torchrun --nproc_per_node 2 examples/ddp_train.py s3://bucket/shards/ --ckpt s3://bucket/ckpt/
    torchrun --nproc_per_node 2 examples/ddp_train.py s3://bucket/shards/ --ckpt s3://bucket/ckpt/ --resume

Shards hold ``NAME.cls`` and ``NAME.png`` samples (webdataset layout). Every rank reads the same number
of shards (s3pipes leaves out the remainder of an uneven split), so DDP never waits on a rank that ran
out; the loader state saved with the checkpoint resumes the epoch without repeating or losing a sample.
"""

import argparse
import io

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.datapipes.iter import IterableWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

import s3pipes


def decode(sample: dict) -> tuple:
    image = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB").resize((8, 8)), dtype=np.float32)
    return torch.from_numpy(image / 255).permute(2, 0, 1), int(sample["cls"]) % 10, sample["__key__"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="an S3 prefix of tar shards")
    parser.add_argument("--ckpt", required=True, help="an S3 prefix for the checkpoints, one per rank")
    parser.add_argument("--resume", action="store_true", help="start from the checkpoint under --ckpt")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=1, help="steps between checkpoints")
    parser.add_argument("--stop-after", type=int, default=0, help="stop after this many steps (a simulated crash)")
    parser.add_argument("--seen", help="append each sample key trained on to SEEN.rankN")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    pipe = (IterableWrapper([args.url]).list_s3().shuffle_shards().read_s3(stream=True)
            .load_tar().group_samples().shuffle_buffer(64).map(decode))
    loader = StatefulDataLoader(pipe, batch_size=args.batch_size, num_workers=args.workers)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = f"{args.ckpt.rstrip('/')}/rank{rank}.pt"

    step, epoch = 0, 0
    if args.resume:
        state = s3pipes.load(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        step, epoch = state["step"], state["epoch"]
    log = open(f"{args.seen}.rank{rank}", "a") if args.seen else None

    loss = torch.tensor(float("nan"))
    while epoch < args.epochs:
        for images, labels, keys in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if log:
                log.write("".join(f"{k}\n" for k in keys))
                log.flush()
            if step % args.save_every == 0 or step == args.stop_after:
                s3pipes.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "loader": loader.state_dict(), "step": step, "epoch": epoch}, ckpt)
            if step == args.stop_after:
                print(f"rank {rank}: stopped after step {step}, checkpoint at {ckpt}", flush=True)
                return
        epoch += 1
    print(f"rank {rank}: {step} steps, {epoch} epochs, last loss {loss.item():.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
