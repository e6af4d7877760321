"""A small FastAPI app for trying out pmx.

Run it from the repository root with four worker processes:

    pmx run examples.fastapi_app.main:app -i 4 --bind 127.0.0.1:8000

Every response that mentions a pid comes from the worker process that
handled the request, so repeated requests show the load being spread.
"""

import asyncio
import os

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

app = FastAPI(title="pmx FastAPI example")


@app.get("/")
async def index():
    return {
        "message": "hello from pmx",
        "pid": os.getpid(),
        "worker": os.environ.get("PMX_WORKER_ID"),
    }


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/pid", response_class=PlainTextResponse)
async def pid():
    return PlainTextResponse(str(os.getpid()))


@app.get("/slow")
async def slow(ms: int = Query(1000, ge=0, le=600_000)):
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}


@app.get("/client")
async def client(request: Request):
    peer = request.client
    return {"client": [peer.host, peer.port] if peer else None}


@app.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(text)
    except WebSocketDisconnect:
        pass
