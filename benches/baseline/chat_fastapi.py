"""The architecture roomlog replaces, reduced to its essentials, for a side-by-side benchmark.

A FastAPI + uvicorn WebSocket endpoint that broadcasts every message to every connection and
keeps the last 100 in a Python list, sending the last 50 on connect. With ROOMLOG_BASELINE_SQLITE
set to a file path, it also commits each message to SQLite before broadcasting it (the variant
"with durability"). Frames match what benches/load sends and reads.

Run: uvicorn --app-dir benches/baseline chat_fastapi:app --host 127.0.0.1 --port 7800
"""

import json
import os
import sqlite3

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
history: list[dict] = []
connections: set[WebSocket] = set()
seq = 0

db_path = os.environ.get("ROOMLOG_BASELINE_SQLITE")
db = None
if db_path:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, room TEXT, body TEXT)")


@app.websocket("/ws")
async def chat(ws: WebSocket):
    global seq
    await ws.accept()
    connections.add(ws)
    for message in history[-50:]:
        await ws.send_text(json.dumps(message))
    try:
        while True:
            frame = json.loads(await ws.receive_text())
            seq += 1
            message = {"type": "message", "room": frame.get("room"), "seq": seq, "body": frame.get("body")}
            if db is not None:
                db.execute("BEGIN")
                db.execute("INSERT INTO messages VALUES (?, ?, ?)", (seq, message["room"], message["body"]))
                db.execute("COMMIT")
            history.append(message)
            del history[:-100]
            text = json.dumps(message)
            for peer in list(connections):
                try:
                    await peer.send_text(text)
                except Exception:
                    connections.discard(peer)
    except WebSocketDisconnect:
        pass
    finally:
        connections.discard(ws)
