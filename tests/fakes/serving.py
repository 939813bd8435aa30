"""Running a fake server standalone (`python -m tests.fakes.<name> [--host H] [--port P]`): it prints
`LISTENING <port>` once ready (tests/conftest.py's fake_server reads it) and exits cleanly on SIGTERM/SIGINT."""

import argparse
import asyncio
import signal
from typing import Callable

from aiohttp import web


async def _serve(make_app: Callable[[], web.Application], host: str, port: int, backlog: int) -> None:
    # access_log=None: per-request logging would dominate the cost of tiny requests.
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    print(f"LISTENING {runner.addresses[0][1]}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_main(make_app: Callable[[], web.Application], description: str, *, backlog: int = 128) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(_serve(make_app, args.host, args.port, backlog))
