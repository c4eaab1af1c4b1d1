"""Iterable-style: tar shards of label + image pairs, shards shuffled per epoch, samples through a buffer.

    python examples/s3_cv_iterable_shuffle_example.py s3://bucket/shards/ [--epochs 2 --workers 4]

The plugin's example, unchanged but for the import. Each shard holds ``NAME.cls`` (the label) then
``NAME.png`` for every sample, as webdataset writers lay them out. (``s3pipes.SampleGrouper`` pairs
members by name instead of by position, which survives any member order.)
"""

import argparse
import io
import os

from _transforms import preproc
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from s3pipes import S3IterableDataset, ShuffleDataset


class ImageS3(IterableDataset):
    def __init__(self, urls, shuffle_urls=False, transform=None):
        self.s3_iter_dataset = S3IterableDataset(urls, shuffle_urls)
        self.transform = transform

    def data_generator(self):
        try:
            while True:
                # Based on alphabetical order of files, sequence of label and image may change.
                label_fname, label_fobj = next(self.s3_iter_dataset_iterator)
                image_fname, image_fobj = next(self.s3_iter_dataset_iterator)

                label = int(label_fobj)
                image_np = Image.open(io.BytesIO(image_fobj)).convert("RGB")

                # Apply torch vision transforms if provided
                if self.transform is not None:
                    image_np = self.transform(image_np)
                yield image_np, label

        except StopIteration:
            return

    def __iter__(self):
        self.s3_iter_dataset_iterator = iter(self.s3_iter_dataset)
        return self.data_generator()

    def set_epoch(self, epoch):
        self.s3_iter_dataset.set_epoch(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="+", help="an S3 prefix of shards, or shard URLs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--buffer-size", type=int, default=4000)
    args = parser.parse_args()

    dataset = ImageS3(args.urls, transform=preproc, shuffle_urls=True)
    for epoch in range(args.epochs):
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, num_workers=args.workers, batch_size=args.batch_size)
        n = sum(len(labels) for _, labels in loader)
        print(f"epoch {epoch}: {n} samples, shards shuffled")

    shuffled = ShuffleDataset(ImageS3(args.urls, transform=preproc), buffer_size=args.buffer_size)
    loader = DataLoader(shuffled, num_workers=args.workers, batch_size=args.batch_size)
    n = sum(len(labels) for _, labels in loader)
    print(f"ShuffleDataset: {n} samples, shuffled across shards")


if __name__ == "__main__":
    main()
