"""Map-style: a prefix of images read with S3Dataset, decoded and transformed in a subclass.

    python examples/s3_cv_transform.py s3://bucket/images/ [--workers 4]

The plugin's example, unchanged but for the import (the old ``awsio`` import works too). Set
S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) for an S3-compatible store, AWS_REGION for AWS.
"""

import argparse
import io
import os

from _transforms import preproc
from PIL import Image
from torch.utils.data import DataLoader

from s3pipes import S3Dataset


class S3ImageSet(S3Dataset):
    def __init__(self, urls, transform=None):
        super().__init__(urls)
        self.transform = transform

    def __getitem__(self, idx):
        img_name, img = super(S3ImageSet, self).__getitem__(idx)
        # Convert bytes object to image
        img = Image.open(io.BytesIO(img)).convert("RGB")

        # Apply preprocessing functions on data
        if self.transform is not None:
            img = self.transform(img)
        return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", help="an S3 prefix of images, or one image URL")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    dataset = S3ImageSet(args.urls, transform=preproc)
    dataloader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    images = batches = 0
    for batch in dataloader:
        images += len(batch)
        batches += 1
    print(f"read {images} images in {batches} batches of shape {tuple(batch.shape[1:])}")


if __name__ == "__main__":
    main()
