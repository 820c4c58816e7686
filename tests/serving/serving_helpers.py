"""Shared helpers for the serving tests and tools/bench_serving.py: test images, a server subprocess."""

import io
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SERVING_LINE = re.compile(r"serving model (\S+) on ([0-9.]+):(\d+)")


# ---------------------------------------------------------------- images ----

def _cv2_encode(ext, image, params=()):
    import cv2

    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return data.tobytes()


def noise(height, width, channels=3, seed=0, dtype=np.uint8):
    rng = np.random.RandomState(seed)
    high = 65535 if dtype == np.uint16 else 255
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.randint(0, high + 1, shape).astype(dtype)


def jpeg(height=32, width=40, seed=0):
    return _cv2_encode(".jpg", noise(height, width, seed=seed))


def png(image):
    return _cv2_encode(".png", image)


def gif(height=20, width=30, seed=0):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(noise(height, width, seed=seed)).save(buf, "GIF")
    return buf.getvalue()


def valid_unusual_images():
    """{name: (bytes, expected num_faces under the toy model)} of odd but decodable images."""
    import cv2

    return {
        "grayscale_png": (png(noise(24, 30, channels=1, seed=1)), 1),
        "rgba_png": (png(noise(24, 30, channels=4, seed=2)), 1),
        "png_16bit": (png(noise(24, 30, seed=3, dtype=np.uint16)), 1),
        "gif": (gif(seed=4), 1),
        "bmp": (_cv2_encode(".bmp", noise(17, 23, seed=5)), 1),
        "webp": (_cv2_encode(".webp", noise(24, 30, seed=6)), 1),
        "one_by_one_png": (png(noise(1, 1, seed=7)), 0),   # one pixel is uniform
        "tall_thin_jpeg": (jpeg(200, 2, seed=8), 1),
        "progressive_jpeg": (_cv2_encode(".jpg", noise(40, 40, seed=9),
                                         [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), 1),
        "uniform_no_face_jpeg": (_cv2_encode(".jpg", np.full((48, 64, 3), 128, np.uint8)), 0),
    }


def png_claiming(width, height):
    """A tiny PNG whose IHDR claims width x height (the IDAT is a stub)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def jpeg_claiming(width, height):
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(jpeg(16, 16))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width, height):
    data = bytearray(gif())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


# ---------------------------------------------------------------- server ----

def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """`python -m tfattr.serve ... --port 0` as a subprocess; stderr to a log file."""

    def __init__(self, model_base_path, log_path, extra_args=(), timeout=180):
        self.log_path = Path(log_path)
        cmd = [sys.executable, "-m", "tfattr.serve", "--model_base_path", str(model_base_path),
               "--model_name", "tfattr", "--host", "127.0.0.1", "--port", "0", *map(str, extra_args)]
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + timeout
        self.port = None
        while time.time() < deadline:
            match = SERVING_LINE.search(self.log())
            if match:
                self.port = int(match.group(3))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        if self.port is None:
            self.stop()
            raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")
        self.target = f"127.0.0.1:{self.port}"

    def log(self):
        return self.log_path.read_text(errors="replace")

    def rss(self):
        return rss_bytes(self.proc.pid)

    def stop(self, timeout=30):
        """SIGTERM, wait; returns the exit code (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
