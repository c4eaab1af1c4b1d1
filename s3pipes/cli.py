"""``s3pipes``: the command line. ``demo`` runs the whole thing on a local S3 endpoint; ``ls`` and
``bench`` look at a real bucket (the usual AWS configuration, or ``--endpoint-url``) or a local path."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Sequence

from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper
from tqdm import tqdm

from .accounting import usage
from .config import S3Config
from .s3.errors import ANONYMOUS, ENDPOINT_ARG
from .s3.usage import human_bytes
from .stores import client_for

# The library's hints name S3Config fields and environment variables; here the same settings are options.
_CLI_WORDS = [(ANONYMOUS, "--anonymous"), (ENDPOINT_ARG, "--endpoint-url"), ("set AWS_REGION=", "pass --region ")]


def _for_cli(message: str) -> str:
    """A library message with its hints reworded as this command's options."""
    for library, cli in _CLI_WORDS:
        message = message.replace(library, cli)
    return message


def _config(args: argparse.Namespace) -> S3Config:
    return S3Config(endpoint_url=args.endpoint_url, region=args.region, anonymous=args.anonymous)


def demo(args: argparse.Namespace) -> None:
    from . import demo as d

    with d.start_endpoint() as endpoint:
        prefix = f"s3://{d.BUCKET}/train/"
        print(f"local S3 endpoint: {endpoint.url}")
        print(f"writing {args.shards} shards x {args.per_shard} images to {prefix} ...", flush=True)
        d.write_dataset(prefix, args.shards, args.per_shard)
        print("training a tiny model for one epoch, streamed through list_s3().shuffle_shards()"
              ".read_s3(stream=True).load_tar().group_samples().shuffle_buffer(500).decode()"
              ".to_tuple('png', 'cls')", flush=True)
        # smoothing=0: the bar shows the average since the epoch's clock started (progress(0) resets it),
        # the rate the summary prints, not a moving average of the last few batches.
        with tqdm(total=args.shards * args.per_shard, unit=" samples", desc="epoch 1", smoothing=0) as bar:
            stats = d.train_epoch(prefix, workers=args.workers, batch_size=args.batch_size,
                                  progress=lambda n: bar.update(n) if n else bar.reset())
        print(f"demo: {stats} ({args.shards} shards, {args.workers} workers)")
        print(f"demo batches: {stats.first_batch}")
        print(f"demo usage: {stats.usage}", flush=True)
        if args.keep:
            print(f"\nthe endpoint stays up at {endpoint.url} with the dataset under {prefix}; to use it:")
            for name, value in endpoint.env.items():
                print(f"  export {name}={value}")
            print("Ctrl-C stops it.", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass


def ls(args: argparse.Namespace) -> None:
    count = total = 0
    for obj in client_for(args.url, _config(args)).list(args.url):
        print(f"{obj.size:>14,}  {obj.url}")
        count, total = count + 1, total + obj.size
    print(f"{count} objects, {human_bytes(total)} ({total:,} bytes)")


def index(args: argparse.Namespace) -> None:
    from .index import build_index

    built = build_index(args.url, config=_config(args), concurrency=args.concurrency, progress=True)
    print(f"index: {built.url}: {len(built)} shards, {sum(built.column('members')):,} members, "
          f"{sum(built.column('samples')):,} samples, {human_bytes(sum(built.column('size')))}")


def _consume(item: tuple[str, Any]) -> int:
    """Read one payload in the worker and hand back only its size, so the bench measures the store,
    not the copy of every byte to the main process."""
    _, payload = item
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    with payload:
        return sum(len(chunk) for chunk in iter(lambda: payload.read(1 << 20), b""))


def bench(args: argparse.Namespace) -> None:
    config = _config(args)
    before = usage()
    objects = list(client_for(args.url, config).list(args.url))
    listing = usage() - before
    total = sum(o.size for o in objects)
    dp = (IterableWrapper([o.url for o in objects])
          .read_s3(stream=args.stream, concurrency=args.concurrency, ordered=False, config=config).map(_consume))
    loader = DataLoader(dp, batch_size=None, num_workers=args.workers)
    start = time.perf_counter()
    read = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="read") as bar:
        for n in loader:
            read += n
            bar.update(n)
    seconds = time.perf_counter() - start
    print(f"bench: {len(objects)} objects, {human_bytes(read)} in {seconds:.1f} s: {read / 1e6 / seconds:.1f} MB/s, "
          f"{len(objects) / seconds:.1f} objects/s (concurrency {args.concurrency or 'adapted'}, {args.workers} workers"
          f"{', stream' if args.stream else ''})")
    print(f"bench usage: {listing + usage(loader)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3pipes", description="Stream training data from S3 (or any fsspec store) into PyTorch.",
        epilog="Run `s3pipes demo` to see it work with no AWS account; `s3pipes COMMAND --help` for options.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train a tiny model from a local S3 endpoint, print the throughput",
                       description="Start a local S3 endpoint (moto), write a synthetic image dataset as tar "
                                   "shards, and train a tiny model on it for one epoch through s3pipes' pipes "
                                   "and a DataLoader. Needs the demo extra: pip install 's3pipes[demo]'.")
    d.add_argument("--shards", type=int, metavar="N", default=8, help="tar shards to write (default 8)")
    d.add_argument("--per-shard", type=int, metavar="N", default=250, help="images per shard (default 250)")
    d.add_argument("--workers", type=int, metavar="N", default=2, help="DataLoader workers (default 2)")
    d.add_argument("--batch-size", type=int, metavar="N", default=64, help="batch size (default 64)")
    d.add_argument("--keep", action="store_true",
                   help="keep the endpoint running afterwards and print the variables to reach it, until Ctrl-C")
    d.set_defaults(run=demo)

    def store_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("url", metavar="URL", help="s3://bucket/prefix/, an object URL, a local path or another fsspec URL")
        cmd.add_argument("--endpoint-url", metavar="URL", help="an S3-compatible endpoint (default: S3_ENDPOINT_URL, or AWS)")
        cmd.add_argument("--region", metavar="NAME", help="the bucket's region (default: AWS_REGION, the profile's, us-west-2)")
        cmd.add_argument("--anonymous", action="store_true", help="unsigned requests, for public buckets")

    ls_cmd = sub.add_parser("ls", help="list objects under a prefix with sizes and totals",
                            description="List the objects under a prefix (recursively, in key order) with "
                                        "their sizes, then the count and total.")
    store_options(ls_cmd)
    ls_cmd.set_defaults(run=ls)

    i = sub.add_parser("index", help="write the index of a prefix: shards, sizes, ETags, members, samples",
                       description="Scan every object under a prefix and write _s3pipes_index.jsonl.gz beside "
                                   "them: list_s3 then reads it with one GET instead of listing, lengths are "
                                   "exact, ranks get equal samples, and resumes start at the next member. Under "
                                   "torchrun the shards are split over the ranks and rank 0 writes the index.")
    store_options(i)
    i.add_argument("--concurrency", type=int, metavar="N", default=32, help="shards scanned at once (default 32)")
    i.set_defaults(run=index)

    b = sub.add_parser("bench", help="measure read throughput of a prefix",
                       description="Read every object under a prefix through read_s3 in a DataLoader and "
                                   "report MB/s and objects/s.")
    store_options(b)
    b.add_argument("--concurrency", type=int, metavar="N", default=None,
                   help="objects in flight per worker at most (default: adapted, from 64; -v logs where it settles)")
    b.add_argument("--workers", type=int, metavar="N", default=2, help="DataLoader workers (default 2; 0 reads in this process)")
    b.add_argument("--stream", action="store_true", help="read objects as streams (read_s3(stream=True))")
    b.set_defaults(run=bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (OSError, ValueError, ImportError) as e:  # the library's errors already say what to do
        print(f"s3pipes {args.command}: {_for_cli(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
