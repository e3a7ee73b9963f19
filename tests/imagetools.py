"""Reading disk images without mounting them: the partition table with sfdisk, ext4 files with
debugfs, FAT files with mtools (as a user would check an image before writing it to a card)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _out(*cmd: str, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    assert res.returncode == 0, f"{cmd}: {res.stderr}"
    return res.stdout


@dataclass
class Disk:
    """A disk image opened for reading: its table and its two file systems, copied out."""

    table: dict[str, Any]
    boot: Path
    root: Path

    @classmethod
    def open(cls, image: Path, work: Path) -> Disk:
        work.mkdir(parents=True, exist_ok=True)
        raw = work / "disk.raw"
        _out("qemu-img", "convert", "-O", "raw", str(image), str(raw))
        table = json.loads(_out("sfdisk", "--json", str(raw)))["partitiontable"]
        parts = []
        for i, p in enumerate(table["partitions"]):
            dest = work / f"part{i + 1}.img"
            _out(
                "dd", f"if={raw}", f"of={dest}", "bs=512", f"skip={p['start']}",
                f"count={p['size']}", "conv=sparse", "status=none",
            )  # fmt: skip
            parts.append(dest)
        raw.unlink()
        return cls(table, parts[0], parts[-1])

    # ext4 (the root filesystem)
    def cat(self, path: str) -> str:
        res = subprocess.run(
            ["debugfs", "-R", f"cat {path}", str(self.root)],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    def exists(self, path: str) -> bool:
        res = subprocess.run(
            ["debugfs", "-R", f"stat {path}", str(self.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        return "File not found" not in res.stderr and "Inode:" in res.stdout

    def ls(self, path: str) -> list[str]:
        """Names in a folder (`ls -p` lines: /inode/mode/uid/gid/name/size/)."""
        lines = _out("debugfs", "-R", f"ls -p {path}", str(self.root)).splitlines()
        names = [line.split("/")[5] for line in lines if line.count("/") >= 6]
        return sorted(n for n in names if n not in (".", ".."))

    def root_label(self) -> str:
        for line in _out("dumpe2fs", "-h", str(self.root)).splitlines():
            if line.startswith("Filesystem volume name:"):
                return line.split(":", 1)[1].strip()
        return ""

    def packages(self) -> set[str]:
        """Installed packages, from dpkg's status file."""
        out, name = set(), ""
        for line in self.cat("/var/lib/dpkg/status").splitlines():
            if line.startswith("Package: "):
                name = line.split()[1]
            elif line == "Status: install ok installed":
                out.add(name)
        return out

    def count(self, needle: bytes) -> int:
        """How many times ``needle`` occurs in the raw bytes of both file systems."""
        found = 0
        for part in (self.boot, self.root):
            with part.open("rb") as fh:
                tail = b""
                for block in iter(lambda: fh.read(1 << 22), b""):
                    found += (tail + block).count(needle)
                    tail = block[-(len(needle) - 1) :]
        return found

    def matches(self, pattern: re.Pattern[bytes], width: int) -> set[bytes]:
        """Every distinct match of ``pattern`` (at most ``width`` bytes long) in the raw bytes
        of both file systems."""
        found: set[bytes] = set()
        for part in (self.boot, self.root):
            with part.open("rb") as fh:
                tail = b""
                for block in iter(lambda: fh.read(1 << 22), b""):
                    found.update(m.group(0) for m in pattern.finditer(tail + block))
                    tail = block[-(width - 1) :]
        return found

    def mode(self, path: str) -> str:
        for line in _out("debugfs", "-R", f"stat {path}", str(self.root)).splitlines():
            if "Mode:" in line:
                return line.split("Mode:")[1].split()[0]
        return ""

    # FAT (the EFI system partition, or an SD card's firmware partition)
    def fat_files(self) -> set[str]:
        listing = _out(
            "mdir", "-/", "-b", "-i", str(self.boot), "::/", env={"MTOOLS_SKIP_CHECK": "1"}
        )
        return {line.removeprefix("::/") for line in listing.splitlines() if line.strip()}

    def fat_cat(self, path: str) -> str:
        return _out("mtype", "-i", str(self.boot), f"::/{path}", env={"MTOOLS_SKIP_CHECK": "1"})

    def fat_label(self) -> str:
        return _out("mlabel", "-s", "-i", str(self.boot), "::", env={"MTOOLS_SKIP_CHECK": "1"})
