"""The node's container-log endpoint, as kubelet serves it (sandbox code): `GET
/containerLogs/{namespace}/{pod}/{container}?tailLines=N&timestamps=true&follow=true`.
The API emulator proxies `pods/{name}/log` here, so `kubectl logs [-f]` works.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from services.checkpoint_agent.container_log import LogReader, render

# (namespace, pod, container) -> (the container's log file, its container id), or None
# when that container is not on this node.
Resolve = Callable[[str, str, str], "tuple[Path, str] | None"]
FOLLOW_POLL_SECONDS = 0.2
# What Go's strconv.ParseBool takes as true: kubectl sends "true", the Python client "True".
GO_TRUE = ("1", "t", "T", "true", "TRUE", "True")


class LogServer:
    def __init__(self, node: str, resolve: Resolve, alive: Callable[[str], bool]) -> None:
        self.node, self.resolve, self.alive = node, resolve, alive
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"logs-{node}", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> LogServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # - stdlib's name
                pass

            def do_GET(self) -> None:  # - stdlib's name
                url = urllib.parse.urlsplit(self.path)
                parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._text(404, "not found: GET /containerLogs/{namespace}/{pod}/{container}\n")
                    return
                _, namespace, pod, container = parts
                query = urllib.parse.parse_qs(url.query)
                try:
                    tail = int(query["tailLines"][0]) if "tailLines" in query else None
                except ValueError:
                    self._text(400, f"tailLines must be a number, not {query['tailLines'][0]!r}\n")
                    return
                timestamps = query.get("timestamps", ["false"])[0] in GO_TRUE
                follow = query.get("follow", ["false"])[0] in GO_TRUE
                found = owner.resolve(namespace, pod, container)
                if found is None:
                    self._text(
                        404, f"container {container} of pod {namespace}/{pod} is not on {owner.node}\n"
                    )
                    return
                log_file, container_id = found
                reader = LogReader(log_file)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                try:
                    self.wfile.write(render(reader.poll(), tail=tail, timestamps=timestamps))
                    self.wfile.flush()
                    while follow:
                        time.sleep(FOLLOW_POLL_SECONDS)
                        lines = reader.poll()
                        if lines:
                            self.wfile.write(render(lines, timestamps=timestamps))
                            self.wfile.flush()
                        elif not owner.alive(container_id):
                            break  # the container exited or moved away: the stream ends
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped following

            def _text(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
