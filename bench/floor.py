"""The floor under the gateway's per-chunk cost: what the libraries it is built on spend for one
paced streamed chunk on this machine, with none of the gateway's own code.

    python -m bench.floor [--seconds S] [--streams C]

1. grpc.aio: a server-streaming RPC yielding 20 `google.api.HttpBody` messages 10 ms apart (as the
   gateway answers a paced stream), served in a process of its own; its CPU per message.
2. aiohttp: a client reading a paced SSE stream from the fake OpenAI upstream (the adapters' HTTP
   client); its CPU per chunk, reading alone, then also decoding the SSE events and parsing each
   chunk's JSON as the OpenAI adapter does.

docs/performance.md §"The floor" compares these with the gateway's own per-chunk CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson
import psutil

from bench.loadgen import cpu_seconds
from bench.stack import REPO, die_with_parent, read_line, stop_process

CHUNKS = 20
CHUNK_GAP_S = 0.010
FIRST_S = 0.050
METHOD = "/bench.Floor/Stream"


async def _serve() -> None:
    """The bare server: one method, paced messages, nothing else."""
    import grpc
    from google.api import httpbody_pb2

    async def stream(_request: Any, _context: Any) -> Any:
        await asyncio.sleep(FIRST_S)
        for _ in range(CHUNKS):
            yield httpbody_pb2.HttpBody(content_type="text/event-stream",
                                        data=b"data: " + b"x" * 180 + b"\n\n")
            await asyncio.sleep(CHUNK_GAP_S)

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=httpbody_pb2.HttpBody.FromString,
        response_serializer=httpbody_pb2.HttpBody.SerializeToString)
    generic = grpc.method_handlers_generic_handler("bench.Floor", {"Stream": handler})
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _grpc_floor(port: int, server_pid: int, seconds: float, streams: int) -> dict[str, float]:
    import grpc
    from google.api import httpbody_pb2

    server = psutil.Process(server_pid)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(METHOD, request_serializer=httpbody_pb2.HttpBody.SerializeToString,
                                    response_deserializer=httpbody_pb2.HttpBody.FromString)

        async def one() -> int:
            return len([m async for m in call(httpbody_pb2.HttpBody())])

        await one()
        return await _closed_loop(one, lambda: sum(server.cpu_times()[:2]), seconds, streams)


async def _closed_loop(one: Any, cpu: Any, seconds: float, streams: int) -> dict[str, float]:
    done = chunks = 0
    before = cpu()
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done, chunks
        while time.monotonic() < deadline:
            got = await one()  # not `chunks += await ...`: that reads `chunks` before the await
            chunks += got
            done += 1

    await asyncio.gather(*(loop() for _ in range(streams)))
    used_ms = (cpu() - before) * 1000
    return {"streams": done, "chunks_per_stream": round(chunks / done, 1),
            "cpu_ms_per_stream": round(used_ms / done, 3),
            "cpu_us_per_chunk": round(used_ms * 1000 / chunks, 1)}


async def _aiohttp_floor(url: str, key: str, seconds: float, streams: int, parse: bool) -> dict[str, float]:
    from services.adapters.json_values import parse_object
    from services.adapters.sse import SSEDecoder

    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True,
                         "messages": [{"role": "user", "content": " ".join(["word"] * (CHUNKS - 2))}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)) as session:

        async def one() -> int:
            count = 0
            async with session.post(url + "/chat/completions", data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30, sock_read=30)) as response:
                decoder = SSEDecoder()
                async for chunk, _ in response.content.iter_chunks():
                    count += chunk.count(b"\n\n")  # the events in this read
                    if parse:
                        for event in decoder.feed(chunk):
                            if event.data != b"[DONE]":
                                parse_object(event.data)
            return count

        await one()
        return await _closed_loop(one, cpu_seconds, seconds, streams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the libraries' per-chunk floor (bench)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import uvloop

    if args.serve:
        uvloop.run(_serve())
        return 0
    server = subprocess.Popen([sys.executable, "-m", "bench.floor", "--serve"], cwd=REPO,
                              stdout=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent)
    upstream = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", "0",
                                 "--api-key", "floor", "--first-frame-delay-ms", str(FIRST_S * 1000),
                                 "--chunk-delay-ms", str(CHUNK_GAP_S * 1000)],
                                cwd=REPO, stdout=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        grpc_port, upstream_port = int(read_line(server, 30)), int(read_line(upstream, 30))
        url = f"http://127.0.0.1:{upstream_port}/v1"
        results = {
            "grpc.aio server, per message": uvloop.run(_grpc_floor(grpc_port, server.pid, args.seconds,
                                                                   args.streams)),
            "aiohttp client, per chunk read": uvloop.run(_aiohttp_floor(url, "floor", args.seconds,
                                                                        args.streams, False)),
            "aiohttp client, read + SSE + JSON": uvloop.run(_aiohttp_floor(url, "floor", args.seconds,
                                                                           args.streams, True)),
        }
    finally:
        stop_process(server)
        stop_process(upstream)
    for name, figures in results.items():
        print(f"{name:36s} {figures['cpu_us_per_chunk']:7.1f} us/chunk  {figures['cpu_ms_per_stream']:6.2f} "
              f"ms/stream  ({figures['streams']} streams of {figures['chunks_per_stream']:g} chunks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
