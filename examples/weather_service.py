#!/usr/bin/env python3
"""A small LAN weather service for the orchestrator example: GET /weather?city=...&date=...

It answers a made-up but stable forecast for any city (the same city and date always give the
same figures), in JSON with English and Chinese labels, so the edge-runtime example works with no
internet. Run it next to the daemon:

    python3 examples/weather_service.py --port 8081
"""

from __future__ import annotations

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CONDITIONS = [
    ("sunny", "晴"),
    ("partly cloudy", "多云"),
    ("overcast", "阴"),
    ("light rain", "小雨"),
    ("showers", "阵雨"),
    ("snow", "小雪"),
]
DATES = {
    "today": ("today", "今天"),
    "tomorrow": ("tomorrow", "明天"),
    "day_after_tomorrow": ("the day after tomorrow", "后天"),
}


def forecast(city: str, date: str) -> dict[str, object]:
    """A stable forecast for one city and day."""
    seed = hashlib.sha256(f"{city.casefold()}|{date}".encode()).digest()
    condition, condition_zh = CONDITIONS[seed[0] % len(CONDITIONS)]
    low = seed[1] % 25 - 5
    high = low + 3 + seed[2] % 10
    date_en, date_zh = DATES[date]
    return {
        "city": city,
        "date": date,
        "date_label": date_en,
        "date_label_zh": date_zh,
        "condition": condition,
        "condition_zh": condition_zh,
        "low_c": low,
        "high_c": high,
        "precipitation": 30 + seed[3] % 70 if condition in ("light rain", "showers") else seed[3] % 20,
    }


class Handler(BaseHTTPRequestHandler):
    """GET /weather only; anything else is 404, a bad query 400."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != "/weather":
            self._send(404, {"error": "unknown path"})
            return
        city = query.get("city", "").strip()
        date = query.get("date", "today")
        if not city or date not in DATES:
            self._send(400, {"error": "give city, and date as today, tomorrow or day_after_tomorrow"})
            return
        self._send(200, forecast(city, date))

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: one line per request is noise next to the daemon's own log."""


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    port = server.server_address[1]
    print(f"weather service on http://{args.host}:{port}/weather", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
