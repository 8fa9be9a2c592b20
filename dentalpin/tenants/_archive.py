"""Archives of tenant data: tables copied out with COPY, checksummed, encrypted at rest.

An archive is a tar file (gzip) of `contents.json` and one COPY text stream per
table, encrypted with Fernet (AES-CBC + HMAC). The platform records the SHA-256 of
the encrypted file and refuses to restore from a file that does not match. COPY
(not pg_dump) keeps archives independent of the server's major version.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

from dentalpin.platform._errors import PlatformError
from dentalpin.platform._settings import Settings

FORMAT_VERSION = 1


class ArchiveError(PlatformError):
    status = 422
    problem = "archive-invalid"


@dataclass(frozen=True)
class TableData:
    name: str
    columns: list[str]
    rows: int
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class SequenceValue:
    name: str
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class ArchiveFile:
    path: Path
    sha256: str
    size_bytes: int


async def dump_tables(raw: asyncpg.Connection, schema: str, tables: list[str]) -> list[TableData]:
    """COPY every table out through `raw`, inside the caller's transaction."""
    dumped = []
    for table in tables:
        columns = [
            r["attname"]
            for r in await raw.fetch(
                "select attname from pg_attribute where attrelid = $1::regclass and attnum > 0 "
                "and not attisdropped and attgenerated = '' order by attnum",
                f'"{schema}"."{table}"',
            )
        ]
        chunks: list[bytes] = []

        async def sink(chunk: bytes, chunks: list[bytes] = chunks) -> None:
            chunks.append(chunk)

        status = await raw.copy_from_table(
            table, schema_name=schema, columns=columns, output=sink, format="text"
        )
        dumped.append(TableData(table, columns, int(status.split()[-1]), b"".join(chunks)))
    return dumped


async def dump_sequences(
    raw: asyncpg.Connection, schema: str, tables: list[str], standalone: list[str]
) -> list[SequenceValue]:
    """Values of the sequences owned by `tables` (serial, identity) and of `standalone` ones."""
    rows = await raw.fetch(
        """
        select s.relname from pg_class s
          join pg_depend d on d.objid = s.oid and d.deptype in ('a', 'i')
          join pg_class t on t.oid = d.refobjid
         where s.relkind = 'S' and s.relnamespace = $1::regnamespace and t.relname = any($2)
        union
        select s.relname from pg_class s
         where s.relkind = 'S' and s.relnamespace = $1::regnamespace and s.relname = any($3)
        order by 1
        """,
        schema,
        tables,
        standalone,
    )
    values = []
    for row in rows:
        seq = await raw.fetchrow(f'select last_value, is_called from "{schema}"."{row["relname"]}"')
        values.append(SequenceValue(row["relname"], seq["last_value"], seq["is_called"]))
    return values


async def load_tables(raw: asyncpg.Connection, schema: str, tables: list[TableData]) -> None:
    for table in tables:
        await raw.copy_to_table(
            table.name,
            schema_name=schema,
            columns=table.columns,
            source=io.BytesIO(table.data),
            format="text",
        )


async def load_sequences(
    raw: asyncpg.Connection, schema: str, sequences: list[SequenceValue]
) -> None:
    for seq in sequences:
        await raw.execute(
            "select setval($1::regclass, $2, $3)",
            f'"{schema}"."{seq.name}"',
            seq.last_value,
            seq.is_called,
        )


def archive_key(settings: Settings) -> bytes:
    """The configured key, or in development one generated once under the data directory."""
    if settings.archive_key is not None:
        return settings.archive_key.get_secret_value().encode()
    if settings.environment == "production":
        raise PlatformError("DENTALPIN_ARCHIVE_KEY must be set in production")
    path = settings.data_dir / "archive.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return path.read_bytes().strip()


def archive_path(directory: Path, name: str) -> Path:
    """Where `write_archive(directory, name, ...)` puts the file (it writes `.tmp` first)."""
    return directory / f"{name}.dparchive"


def write_archive(
    directory: Path,
    name: str,
    contents: dict[str, Any],
    tables: list[TableData],
    sequences: list[SequenceValue],
    key: bytes,
) -> ArchiveFile:
    contents = {
        **contents,
        "format": FORMAT_VERSION,
        "tables": [
            {"name": t.name, "columns": t.columns, "rows": t.rows, "sha256": t.sha256}
            for t in tables
        ],
        "sequences": [
            {"name": s.name, "last_value": s.last_value, "is_called": s.is_called}
            for s in sequences
        ],
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, "contents.json", json.dumps(contents, indent=2, default=str).encode())
        for table in tables:
            _add(tar, f"tables/{table.name}.copy", table.data)
    encrypted = Fernet(key).encrypt(buffer.getvalue())
    directory.mkdir(parents=True, exist_ok=True)
    path = archive_path(directory, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encrypted)
    os.replace(tmp, path)
    return ArchiveFile(path, hashlib.sha256(encrypted).hexdigest(), len(encrypted))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def read_archive(
    path: Path, sha256: str, key: bytes
) -> tuple[dict[str, Any], list[TableData], list[SequenceValue]]:
    """Verify, decrypt and unpack an archive; every table's checksum is checked too."""
    try:
        encrypted = path.read_bytes()
    except FileNotFoundError:
        raise ArchiveError(f"archive file {path} is missing") from None
    if hashlib.sha256(encrypted).hexdigest() != sha256:
        raise ArchiveError(f"archive file {path} does not match its recorded checksum")
    try:
        plain = Fernet(key).decrypt(encrypted)
    except (InvalidToken, ValueError):
        raise ArchiveError(
            f"archive file {path} cannot be decrypted with this archive key"
        ) from None
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:gz") as tar:
        contents = json.loads(_member(tar, "contents.json"))
        tables = []
        for entry in contents["tables"]:
            data = _member(tar, f"tables/{entry['name']}.copy")
            table = TableData(entry["name"], entry["columns"], entry["rows"], data)
            if table.sha256 != entry["sha256"]:
                raise ArchiveError(f"table {entry['name']} in {path} is corrupt (checksum)")
            tables.append(table)
    sequences = [SequenceValue(**s) for s in contents["sequences"]]
    return contents, tables, sequences


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:
        raise ArchiveError(f"archive member {name} is missing")
    return handle.read()


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key, to tell which key an archive needs."""
    return base64.b32encode(hashlib.sha256(key).digest()[:5]).decode().lower()
