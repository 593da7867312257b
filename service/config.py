"""Settings: the one place configuration is read (environment variables and .env).

Every variable is prefixed ``FLOODGATE_`` except ``REDIS_URL``, which follows the common
convention so that container platforms can inject it unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOODGATE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Unset means: start a private embedded redis-server under data_dir.
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "FLOODGATE_REDIS_URL")
    )
    data_dir: Path = Path("var")
    policy_path: Path = REPO_ROOT / "policies" / "default.yaml"
    # the only directory whose policies clients may name (shadow, reload by name); unset:
    # the directory of policy_path
    policy_dir: Path | None = None
    # the API process watches the policy file (and the files it includes) and publishes a
    # valid edit as the new live version; an invalid edit is logged and changes nothing
    policy_watch: bool = True
    policy_watch_interval_s: float = Field(default=1.0, gt=0, le=60)
    # a candidate policy to run in shadow mode from start-up (or use POST /v1/policy/shadow)
    shadow_policy_path: Path | None = None
    # Where `floodgate model build` writes the converted encoder (large, never committed).
    model_dir: Path | None = None
    # trained category heads (`floodgate model train`); None or a missing directory: zero-shot
    heads_dir: Path | None = REPO_ROOT / "models" / "heads"
    # fine-tuned top layers laid over the base encoder (`floodgate model finetune`); unset or
    # missing: the base encoder as converted
    tuned_dir: Path | None = REPO_ROOT / "models" / "encoder"
    host: str = "127.0.0.1"
    port: int = 8000

    # Stream names are prefixed so several deployments (or test runs) can share one server.
    key_prefix: str = "fg"
    consumer_group: str = "workers"

    batch_size: int = Field(default=64, ge=1, le=1024)
    batch_max_wait_ms: int = Field(default=50, ge=0, le=10_000)
    workers: int = Field(default=1, ge=1, le=64, description="worker processes started by serve")
    torch_threads: int = Field(default=0, ge=0, description="0 = let torch decide")
    max_length_tokens: int = Field(default=256, ge=16, le=512)
    # encoder arithmetic: auto = bf16 where the CPU has bf16 units (AMX, AVX512-BF16), else
    # fp32; int8 = dynamic quantisation (faster, but the heads refuse it: models/README.md)
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    # exact-duplicate texts remembered by each worker (spam floods repeat): ~1.5 kB each
    embedding_cache_size: int = Field(default=20_000, ge=0)
    # the classifier reads policy.text.model_view of each post (evasions folded: NFKC,
    # Traditional -> Simplified, spacing and repeated emoji between characters); measured
    # with bench/folded_view.py, models/README.md
    input_view: bool = True

    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=3, ge=1)
    decision_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    audit_maxlen: int = Field(default=1_000_000, ge=1000)
    # Accepted posts are kept (for reclaim and idempotency) at most this long.
    stream_maxlen: int = Field(default=5_000_000, ge=1000)

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # a client that sends its body slower than this is cut off (408): slow-loris bodies
    body_read_timeout_s: float = Field(default=15.0, gt=0, le=600)

    # Redis connections per process: a request waits up to redis_pool_timeout_s for a free
    # one (then 503) instead of failing at once when the pool is busy
    redis_max_connections: int = Field(default=64, ge=2, le=10_000)
    redis_pool_timeout_s: float = Field(default=10.0, gt=0, le=60)
    redis_socket_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # backpressure: over this many accepted-and-undecided posts, submissions are refused
    # with 429 + Retry-After (nothing already accepted is affected); 0 = unbounded
    max_backlog: int = Field(default=200_000, ge=0)
    # synchronous calls (/v1/moderate, /v1/moderations) in flight at once per API process
    # (more get 429), and how long one waits for the workers before 504
    max_sync_inflight: int = Field(default=64, ge=1, le=1024)
    sync_deadline_s: float = Field(default=10.0, gt=0, le=300)

    # supervision: workers publish a heartbeat this often; one silent for heartbeat_ttl_s
    # is presumed dead (/healthz degraded when none is alive)
    heartbeat_interval_s: float = Field(default=2.0, gt=0, le=60)
    heartbeat_ttl_s: float = Field(default=15.0, gt=0, le=3600)
    # consumers idle this long with nothing pending are removed from the group
    consumer_idle_remove_s: int = Field(default=600, ge=10)
    # access: API keys with roles (`floodgate keys create`). On a loopback address with no
    # active key the API runs open for local use (and says so); on any other address it
    # refuses to start without keys unless `insecure` is set.
    insecure: bool = False
    metrics_public: bool = True  # /metrics without a key (else the read role)
    cors_origins: list[str] = Field(default_factory=list)  # empty: CORS off
    # rate limits (token buckets in Redis): requests per API key, posts per author on submit;
    # 0 turns one off (a replay that compresses a day into a minute turns authors off)
    rate_key_per_s: float = Field(default=200.0, ge=0)
    rate_key_burst: int = Field(default=1000, ge=1)
    rate_author_per_min: float = Field(default=60.0, ge=0)
    rate_author_burst: int = Field(default=60, ge=1)
    # language priors per market (JSON: {"intl": {"en": 3.0}}) and for posts without one;
    # unset: language.MARKET_PRIORS / DEFAULT_PRIOR. They only break ties in short Latin text
    language_market_priors: dict[str, dict[str, float]] | None = None
    language_default_prior: dict[str, float] | None = None
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    log_level: str = "INFO"

    # testing aid for fault-injection suites: a worker that reads a post containing this
    # marker kills its own process (SIGKILL), as a segfault in a native library would
    fault_crash_marker: str | None = Field(default=None, min_length=8)

    # human review (the policy's `review:` section): a claimed item goes back into its queue
    # when its reviewer has not resolved it within this lease
    review_lease_s: float = Field(default=300.0, gt=0, le=24 * 3600)

    # language-mix drift (the policy's `language_mix:`): workers count languages in buckets
    # this wide, and one of them judges the window at most this often
    language_mix_bucket_s: int = Field(default=60, ge=1, le=3600)
    language_mix_check_s: float = Field(default=5.0, gt=0, le=600)

    @property
    def resolved_policy_dir(self) -> Path:
        return self.policy_dir or self.policy_path.parent

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or (self.data_dir / "models" / "multilingual-e5-small")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
