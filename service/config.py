"""One validated settings object, read from the environment (prefix ``TABXAI_``)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GiB = 1 << 30


class Settings(BaseSettings):
    """Every setting of the service. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="TABXAI_", extra="ignore")

    data_dir: Path = Field(Path("./tabxai-data"), description="SQLite file and temporary files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file tabxai.db under data_dir."
    )
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=1, le=65535)
    max_upload_bytes: int = Field(2 * GiB, gt=0, description="Largest accepted upload.")
    max_table_bytes: int | None = Field(
        None, gt=0,
        description="Largest table after decompression (a .csv.gz expands, a Parquet file's "
        "columns too); default 8 x max_upload_bytes.",
    )
    max_table_rows: int = Field(50_000_000, gt=0, description="Most rows a dataset may have.")
    auth: Literal["auto", "required"] = Field(
        "auto",
        description="auto: keys are required once one has been created (revoked keys "
        "count, so revoking the last key does not open the API) or when not on loopback; "
        "required: always.",
    )
    trust_uploads: bool = Field(
        False, description="Allow pickle, joblib and TorchScript uploads (runs their code)."
    )
    inspect_memory_bytes: int = Field(2 * GiB, gt=0, description="Memory cap of model inspection.")
    inspect_seconds: float = Field(60.0, gt=0, description="Time cap of model inspection.")
    workers: int = Field(1, ge=0, description="Workers `tabxai serve` starts beside the API.")
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
    job_memory_bytes: int = Field(8 * GiB, gt=0, description="Memory cap of one job process.")
    max_result_bytes: int = Field(
        4 * GiB, gt=0, description="Largest result one job may store, as estimated when it "
        "is submitted (larger jobs are refused with 422).")
    lease_seconds: float = Field(30.0, gt=0, description="How long a claimed job stays leased.")
    heartbeat_seconds: float = Field(5.0, gt=0)
    poll_seconds: float = Field(0.2, gt=0, description="Queue polling interval (SQLite).")
    max_attempts: int = Field(3, ge=1)
    log_level: str = "INFO"
    bootstrap_key: SecretStr | None = Field(
        None, description="A key for the workspace default that `tabxai migrate` and "
        "`tabxai serve` create when it is not there yet (at least 32 characters).")
    key_file: Path | None = Field(
        None, description="On a database with no key, `tabxai migrate` and `tabxai serve` "
        "create one and write it here (mode 600); `tabxai smoke` reads its key from it.")

    extra_kinds: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Modules of further job kinds (plug-ins), comma-separated; each "
        "defines KIND = JobKind(...) or KINDS = [...] (service.registry).")

    @field_validator("extra_kinds", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        # The environment gives "a.b, c.d"; Python callers may give a list.
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("TABXAI_HEARTBEAT_SECONDS must be shorter than TABXAI_LEASE_SECONDS")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tabxai.db').resolve()}"

    @property
    def table_bytes_limit(self) -> int:
        """max_table_bytes, or 8 x max_upload_bytes: room for gzip's usual 3-8x on text."""
        return self.max_table_bytes or 8 * self.max_upload_bytes

    @property
    def on_loopback(self) -> bool:
        return is_loopback(self.host)

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
