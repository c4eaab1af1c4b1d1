"""A TCP proxy on 127.0.0.1 that adds a round trip (half each way) without limiting throughput.

This kernel has no netem, so latency is added in user space: each chunk read from one side is written to
the other side ``delay/2`` after it arrived. Run by ``benchmarks/run.py``; by hand:

    python benchmarks/delayproxy.py --port 9100 --upstream 9000 --rtt-ms 40
"""

from __future__ import annotations

import argparse
import asyncio
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(1 << 18):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((time.monotonic() + delay, b""))
    try:
        await sender
    except ConnectionError:
        pass


async def serve(port: int, upstream: int, rtt_ms: float) -> None:
    delay = rtt_ms / 2000

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(_pipe(cr, sw, delay), _pipe(sr, cw, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.upstream, args.rtt_ms))


if __name__ == "__main__":
    main()
