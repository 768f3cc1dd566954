"""kestream's configuration: one frozen model, the only place that reads the environment.

Every field reads ``KESTREAM_<FIELD NAME IN UPPER CASE>`` (for example ``executor_stream_threads``
reads ``KESTREAM_EXECUTOR_STREAM_THREADS``), and nothing else: faust's own settings are built from
this model explicitly (``kestream.runtime``), so unprefixed variables such as ``BROKER_URL`` or
``WEB_PORT`` never change what kestream does.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kestream.executor.instance_variables import check_env_prefix
from kestream.tasks.worker_group import WORKER_GROUP_KEY_PATTERN


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


#: Per user, as the XDG base directory spec puts data (``$XDG_DATA_HOME`` wins, see
#: :attr:`Settings.data_path`), so a restart from any working directory finds the same state.
DEFAULT_DATA_DIR = "~/.local/share/kestream"

#: Secret settings that may also be read from a file named by ``KESTREAM_<NAME>_FILE``.
_SECRET_FILE_FIELDS = (
    "broker_sasl_password",
    "api_password",
    "api_tokens",
    "index_url",
    "storage_s3_secret_access_key",
    "encryption_key",
)


class Settings(BaseSettings):
    """All ``KESTREAM_*`` variables, with their defaults. See the README's table."""

    #: ``hide_input_in_errors``: a validation error would otherwise quote the raw values, and
    #: a before-validator's error quotes every setting at once, secrets included.
    model_config = SettingsConfigDict(
        env_prefix="KESTREAM_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # -- broker ----------------------------------------------------------------------------
    broker: str | None = Field(
        default=None,
        description="KESTREAM_BROKER: Kafka bootstrap servers, host:port[,host:port]. "
        "Unset: start the embedded Tansu broker on loopback (see KESTREAM_STANDALONE_DURABLE).",
    )
    broker_security_protocol: SecurityProtocol = Field(
        default=SecurityProtocol.PLAINTEXT,
        description="KESTREAM_BROKER_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; "
        "every client (roles, client, bench) uses it, and SASL/SSL settings the protocol would "
        "not use are refused.",
    )
    broker_sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="KESTREAM_BROKER_SASL_MECHANISM: PLAIN, SCRAM-SHA-256/512; required, with "
        "the user name and password, by the SASL_* protocols.",
    )
    broker_sasl_username: str | None = Field(
        default=None, description="KESTREAM_BROKER_SASL_USERNAME: SASL user name."
    )
    broker_sasl_password: SecretStr | None = Field(
        default=None,
        description="KESTREAM_BROKER_SASL_PASSWORD: SASL password (masked in dumps and logs).",
    )
    broker_sasl_password_file: str | None = Field(
        default=None,
        description="KESTREAM_BROKER_SASL_PASSWORD_FILE: file holding the SASL password "
        "(instead of KESTREAM_BROKER_SASL_PASSWORD, which keeps it out of the environment).",
    )
    broker_ssl_cafile: str | None = Field(
        default=None,
        description="KESTREAM_BROKER_SSL_CAFILE: PEM CA bundle the broker's certificate is "
        "checked against (host name included); unset = the system's CAs.",
    )
    broker_ssl_certfile: str | None = Field(
        default=None,
        description="KESTREAM_BROKER_SSL_CERTFILE: PEM client certificate (mutual TLS).",
    )
    broker_ssl_keyfile: str | None = Field(
        default=None,
        description="KESTREAM_BROKER_SSL_KEYFILE: PEM key of the client certificate, if not "
        "in the certificate file.",
    )
    topic_prefix: str = Field(
        default="kestream.", description="KESTREAM_TOPIC_PREFIX: prefix of every topic name."
    )
    partitions: int = Field(
        default=16,
        ge=1,
        description="KESTREAM_PARTITIONS: partitions of every executor topic (at least the "
        "largest stream-thread count you run).",
    )
    replication_factor: int = Field(
        default=1, ge=1, description="KESTREAM_REPLICATION_FACTOR: for topics kestream creates."
    )
    max_record_bytes: int = Field(
        default=1024 * 1024,
        # Above the producer's 16 KiB batch size, so a batch of small records always fits too.
        ge=32 * 1024,
        description="KESTREAM_MAX_RECORD_BYTES: largest record kestream produces; set as "
        "max.message.bytes on the topics it creates on Kafka. The topics' max.message.bytes, "
        "where the broker tells it, lowers it. Larger values go to the internal storage "
        "(KESTREAM_OUTPUT_INLINE_MAX_BYTES).",
    )
    consumer_fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=0,
        description="KESTREAM_CONSUMER_FETCH_MAX_WAIT_MS: unset = 10 on the embedded broker "
        "(its fetches are not woken by new data), 100 on Kafka.",
    )
    consumer_idle_after_ms: int = Field(
        default=2_000,
        ge=0,
        description="KESTREAM_CONSUMER_IDLE_AFTER_MS: on the embedded broker, a consumer with "
        "no records this long pauses its fetching until a producer rings its doorbell or a "
        "probe is due. Where the doorbell works (every client on this host) consumers pause "
        "20 ms after the last record or ring. 0 = always poll. Not used on Kafka, whose "
        "fetches wait for data, nor on a Tansu of one's own (its consumers poll).",
    )
    consumer_idle_probe_max_ms: int = Field(
        default=5_000,
        ge=1,
        description="KESTREAM_CONSUMER_IDLE_PROBE_MAX_MS: a paused consumer fetches once this "
        "often anyway (without a doorbell the gap doubles from 250 ms up to this): the "
        "longest delay of a record whose ring was lost.",
    )
    producer_linger_ms: int = Field(
        default=0,
        ge=0,
        description="KESTREAM_PRODUCER_LINGER_MS: how long every producer (all roles, both "
        "brokers) holds a record to batch it with later ones. 0: sent at once; records queued "
        "while a request is in flight still go out together in the next one, so batching under "
        "load is kept, and each hop saves the linger (5 ms cost W1 with tasks on workers about "
        "70 ms of p50).",
    )
    session_timeout_ms: int | None = Field(
        default=None,
        gt=0,
        description="KESTREAM_SESSION_TIMEOUT_MS: consumer group session; unset = 4000 on the "
        "embedded broker (Tansu holds a group's first join for half of it), 10000 elsewhere "
        "(Kafka, a Tansu of one's own). A member whose event loop is held up longer than this "
        "less a heartbeat is expelled. Kafka waits for a rebalance's members up to this plus "
        "the worker's revoke grace, at least 10000; Tansu ends a rebalance half a session "
        "after it began, rejoined or not.",
    )
    heartbeat_interval_ms: int = Field(
        default=1_000,
        description="KESTREAM_HEARTBEAT_INTERVAL_MS: consumer group heartbeat; a member "
        "learns of a rebalance at its next one.",
    )
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="KESTREAM_GROUP_INSTANCE_ID: static group membership on Apache Kafka for "
        "the executor, the worker and the scheduler lease: a process started again with the "
        "same id (a supervisor's restart, a StatefulSet's pod) takes the dead one's place at "
        "once instead of waiting for its session. Unique among live processes; standalone "
        "derives one per child. A clean stop still leaves the group. Not sent to Tansu.",
    )

    # -- executor ----------------------------------------------------------------------------
    executor_stream_threads: int = Field(
        default=0,
        ge=0,
        description="KESTREAM_EXECUTOR_STREAM_THREADS: executor stream processors (processes); "
        "0 = one per CPU core.",
    )
    executor_inline_tasks: bool = Field(
        default=True,
        description="KESTREAM_EXECUTOR_INLINE_TASKS: run Log, Return, Echo, OutputValues and "
        "Fail inside the executor step (same task runs and logs, fewer broker hops).",
    )
    local_handoff: bool = Field(
        default=True,
        description="KESTREAM_LOCAL_HANDOFF: in a process hosting the executor and the worker "
        "(standalone), hand each job and result acknowledged by the broker straight to the "
        "local role owning its partition; the broker copy is still read and deduplicated.",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="KESTREAM_PROCESSING_GUARANTEE: how the executor's effects are delivered: "
        "at_least_once (every consumer downstream ignores a replayed command by its id) or "
        "exactly_once: on Apache Kafka each executor cycle's commands, changelog records and "
        "input offsets commit in one transaction per input partition. Every kestream consumer "
        "on Apache Kafka reads committed records only, whatever its own process's setting. The "
        "embedded Tansu has no transactions: there it stays at_least_once, with a warning.",
    )
    executor_flow_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="KESTREAM_EXECUTOR_FLOW_WAIT_S: how long an execution naming an unknown "
        "flow revision is held before it goes to the dead-letter topic.",
    )
    executor_ended_retention_h: float = Field(
        default=24.0,
        gt=0,
        description="KESTREAM_EXECUTOR_ENDED_RETENTION_H: how long ended executions are "
        "remembered, so a redelivered creation never runs twice.",
    )
    executor_ended_max: int = Field(
        default=1_000_000,
        ge=1,
        description="KESTREAM_EXECUTOR_ENDED_MAX: at most this many ended executions are "
        "remembered per executor stream processor (about 200 bytes each), the oldest "
        "forgotten first, within KESTREAM_EXECUTOR_ENDED_RETENTION_H; at high rates this "
        "count sets the dedup window (a million: about 2.8 h at 6 000 ends per minute).",
    )
    executor_checkpoint_every_s: float = Field(
        default=10.0,
        ge=0,
        description="KESTREAM_EXECUTOR_CHECKPOINT_EVERY_S: how often an executor reads back "
        "the changelog partitions it owns and, where enough changed, writes their local "
        "checkpoint (KESTREAM_DATA_DIR/executor-checkpoints), so a restart reads the "
        "changelog from there instead of from its beginning; 0: no checkpoints.",
    )
    executor_checkpoint_min_records: int = Field(
        default=1000,
        ge=1,
        description="KESTREAM_EXECUTOR_CHECKPOINT_MIN_RECORDS: a partition's checkpoint is "
        "written again only once this many changelog records were read since the last one "
        "(and at a clean stop, whatever the count).",
    )
    executor_checkpoint_max_age_h: float = Field(
        default=12.0,
        gt=0,
        description="KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H: an older checkpoint is not used "
        "(a full read instead); the changelog topic's delete.retention.ms (a day by default) "
        "lowers it where the broker reports it: the broker drops a tombstone that long after "
        "compacting it, and a read from an older checkpoint would miss the deletion.",
    )
    render_timeout_ms: int = Field(
        default=1000,
        ge=1,
        description="KESTREAM_RENDER_TIMEOUT_MS: CPU time one render (a property, a condition, "
        "an output, an input validator's match) may use, in every role and in kestream run; "
        "past it the render fails with 'render exceeded ...' (in the executor, its task run "
        "fails), so a hostile template or input cannot hold a process.",
    )
    step_render_budget_ms: int = Field(
        default=5000,
        ge=1,
        description="KESTREAM_STEP_RENDER_BUDGET_MS: wall time from the start of one executor "
        "step within which all its renders must end (a ForEach starting every lane, a task "
        "with many properties); a render still running then, or started later, fails its task "
        "run with 'render exceeded the step budget ...', so one event cannot hold the event "
        "loop for many render budgets. Far above normal steps: one that starts 10 000 inline "
        "Log tasks takes about 1 s.",
    )
    env_vars_prefix: str = Field(
        default="ENV_",
        description="KESTREAM_ENV_VARS_PREFIX: environment variables whose names start with it "
        "are what flows see as envs (ENV_MY_NAME is {{ envs.my_name }}), as Kestra's "
        "kestra.variables.env-vars-prefix; it may be neither empty nor reach KESTREAM_* "
        "settings or SECRET_* variables.",
    )
    globals: dict[str, Any] = Field(
        default_factory=dict,
        description="KESTREAM_GLOBALS: a JSON object every flow sees as globals "
        "({{ globals.name }}), as Kestra's kestra.variables.globals.",
    )

    # -- worker ------------------------------------------------------------------------------
    worker_threads: int = Field(
        default=0,
        ge=0,
        description="KESTREAM_WORKER_THREADS: task runs per worker process that may run code at "
        "once; 0 = 8 x CPU cores. Waiting tasks (Sleep) take no slot. Blocking Python tasks run "
        "in as many task processes, forked on demand, which a kill or a timeout stops "
        "(docs/tasks.md).",
    )
    worker_max_in_flight: int = Field(
        default=10_000,
        ge=1,
        description="KESTREAM_WORKER_MAX_IN_FLIGHT: cap on task runs in flight per worker.",
    )
    worker_revoke_grace_s: float = Field(
        default=2.0,
        ge=0,
        description="KESTREAM_WORKER_REVOKE_GRACE_S: how long a rebalance lets a worker's "
        "running task runs end before it rejoins; the group waits that long, so a worker's "
        "crash is recovered in about the session timeout plus this (docs/tasks.md, Workers "
        "and rebalances). 0: no wait (a task run about to end whose partition moves runs "
        "again on its new worker); 0 on the embedded broker unless this or "
        "KESTREAM_SESSION_TIMEOUT_MS is set, for Tansu ends a rebalance half a session after it "
        "began, rejoined or not: there a grace must end within half the session less a "
        "heartbeat.",
    )
    worker_group: str | None = Field(
        default=None,
        pattern=WORKER_GROUP_KEY_PATTERN,
        description="KESTREAM_WORKER_GROUP: the worker group a worker process serves (as "
        "`kestream worker --group`): it runs only the tasks whose workerGroup.key is this key; "
        "unset, it runs the tasks without a workerGroup (docs/tasks.md, Worker groups).",
    )
    plugins: str | None = Field(
        default=None,
        description="KESTREAM_PLUGINS: Python modules of task types to import (comma-separated, "
        "e.g. acme.tasks), besides the kestream.tasks entry points of installed packages; "
        "every process that validates or runs flows imports them (docs/tasks.md).",
    )

    # -- API and operations ------------------------------------------------------------------
    web_port: int = Field(
        default=8080, ge=1, le=65535, description="KESTREAM_WEB_PORT: the API's HTTP port."
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="KESTREAM_WEB_HOST: bind address of the API and of every role's "
        "/metrics and /health (the other roles listen on a free port they log).",
    )
    tenant: str = Field(default="main", description="KESTREAM_TENANT: tenant in API paths.")
    index_url: SecretStr | None = Field(
        default=None,
        description="KESTREAM_INDEX_URL: execution index database: unset = SQLite in "
        "KESTREAM_DATA_DIR, sqlite:///path, or postgresql://user:pass@host/db (masked in dumps "
        "and logs: it may carry the database password).",
    )
    index_url_file: str | None = Field(
        default=None,
        description="KESTREAM_INDEX_URL_FILE: file holding KESTREAM_INDEX_URL (instead of it).",
    )
    api_max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="KESTREAM_API_MAX_BODY_BYTES: largest request body the API accepts (413).",
    )
    api_max_upload_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024,
        description="KESTREAM_API_MAX_UPLOAD_BYTES: largest multipart body with files (FILE "
        "inputs, namespace files) the API accepts (413); the files go to disk, then to the "
        "internal storage, never whole into memory.",
    )
    api_max_follows: int = Field(
        default=1000,
        ge=1,
        description="KESTREAM_API_MAX_FOLLOWS: live follows (execution and log event streams) "
        "one API process serves at once; past it a follow is answered 503 with Retry-After.",
    )
    api_wait_max_s: float = Field(
        default=300.0,
        gt=0,
        description="KESTREAM_API_WAIT_MAX_S: longest wait of ?wait=true on a new execution; "
        "past it the API answers with the execution as it stands.",
    )
    api_username: str | None = Field(
        default=None,
        min_length=1,
        description="KESTREAM_API_USERNAME: user name of the API's HTTP Basic authentication "
        "(with KESTREAM_API_PASSWORD). No credentials set: the web servers bind to loopback "
        "only and refuse to start on another address.",
    )
    api_password: SecretStr | None = Field(
        default=None,
        description="KESTREAM_API_PASSWORD: password of the API's HTTP Basic authentication "
        "(masked in dumps and logs).",
    )
    api_password_file: str | None = Field(
        default=None,
        description="KESTREAM_API_PASSWORD_FILE: file holding KESTREAM_API_PASSWORD (instead "
        "of it).",
    )
    api_tokens: SecretStr | None = Field(
        default=None,
        description="KESTREAM_API_TOKENS: bearer tokens the API accepts "
        "(Authorization: Bearer ...), comma-separated (masked in dumps and logs).",
    )
    api_tokens_file: str | None = Field(
        default=None,
        description="KESTREAM_API_TOKENS_FILE: file holding KESTREAM_API_TOKENS (instead of "
        "it; commas or new lines separate the tokens).",
    )
    metrics_auth: bool = Field(
        default=True,
        description="KESTREAM_METRICS_AUTH: /metrics (every role) needs the API's credentials "
        "when they are set, as the other routes do: its labels name namespaces and flows. "
        "false: open to a scraper without credentials.",
    )
    api_cors_origins: str | None = Field(
        default=None,
        description="KESTREAM_API_CORS_ORIGINS: origins (scheme://host[:port], comma-separated) "
        "whose web pages may call the API from a browser; other origins' state-changing "
        "requests get 403.",
    )
    api_url: str | None = Field(
        default=None,
        description="KESTREAM_API_URL: where workers reach the API for the tasks that work on "
        "its execution index (PurgeExecutions, PurgeLogs), and `kestream executions` reaches "
        "it, with the API's credentials; unset: http://KESTREAM_WEB_HOST:KESTREAM_WEB_PORT "
        "(127.0.0.1 for a wildcard host).",
    )
    api_plain_http: bool = Field(
        default=False,
        description="KESTREAM_API_PLAIN_HTTP: allow sending the API's credentials to "
        "KESTREAM_API_URL over plain http to another machine (not a loopback address), where "
        "anyone on the way reads them (a warning is logged); false: refused.",
    )
    kv_sync_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="KESTREAM_KV_SYNC_TIMEOUT_S: longest wait of a KV read or write for the "
        "KV table to catch up with the broker (every acknowledged write is read back); past "
        "it, kv() or the KV task fails saying the KV store did not answer.",
    )
    secrets_file: str | None = Field(
        default=None,
        description="KESTREAM_SECRETS_FILE: a YAML or JSON map of secret names to plain values, "
        "read by workers for secret(); names found here win over SECRET_<NAME> variables "
        "(base64, Kestra's convention).",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="KESTREAM_ENCRYPTION_KEY: key that encrypts SECRET inputs at rest (any text "
        "of 32 characters or more; masked in dumps); without it a flow with a SECRET input "
        "is refused when an execution starts. Or KESTREAM_ENCRYPTION_KEY_FILE.",
    )
    encryption_key_file: str | None = Field(
        default=None,
        description="KESTREAM_ENCRYPTION_KEY_FILE: file holding KESTREAM_ENCRYPTION_KEY.",
    )
    scheduler_tick_ms: int = Field(
        default=1000,
        ge=10,
        description="KESTREAM_SCHEDULER_TICK_MS: longest sleep of the scheduler between "
        "evaluations (it wakes earlier when a trigger is due).",
    )
    scheduler_backfill_slots: int = Field(
        default=10,
        ge=1,
        description="KESTREAM_SCHEDULER_BACKFILL_SLOTS: most slots one backfill fires per "
        "scheduler tick (KESTREAM_SCHEDULER_TICK_MS); the schedule itself is never held back.",
    )
    scheduler_late_after_s: float = Field(
        default=60.0,
        gt=0,
        description="KESTREAM_SCHEDULER_LATE_AFTER_S: a trigger due longer ago than this is "
        "reported late by the scheduler's monitoring loop.",
    )
    data_dir: str = Field(
        default=DEFAULT_DATA_DIR,
        description="KESTREAM_DATA_DIR: local files (index database, process state, the "
        "embedded broker's records); the default is $XDG_DATA_HOME/kestream when "
        "XDG_DATA_HOME is set. `kestream standalone` prints it at start.",
    )
    storage_url: str | None = Field(
        default=None,
        description="KESTREAM_STORAGE_URL: the internal storage (files as kestra:// URIs): "
        "unset, KESTREAM_DATA_DIR/storage; a directory (path or file:///path); or "
        "s3://bucket/prefix. Every role (workers, executor, API) must name the same one.",
    )
    storage_local_fsync: bool = Field(
        default=True,
        description="KESTREAM_STORAGE_LOCAL_FSYNC: a local storage directory fsyncs each file "
        "written and its folder (a file an acknowledged record names survives a power loss; "
        "about 2 ms per file). false: writes stay atomic, not durable (a ForEachItem's "
        "thousands of batch files, a disposable machine).",
    )
    storage_s3_endpoint: str | None = Field(
        default=None,
        description="KESTREAM_STORAGE_S3_ENDPOINT: an S3-compatible server's URL (MinIO, "
        "Ceph...), addressed path-style; unset: AWS S3. http:// is allowed when given.",
    )
    storage_s3_region: str | None = Field(
        default=None, description="KESTREAM_STORAGE_S3_REGION: the bucket's region."
    )
    storage_s3_access_key_id: str | None = Field(
        default=None, description="KESTREAM_STORAGE_S3_ACCESS_KEY_ID: S3 access key id."
    )
    storage_s3_secret_access_key: SecretStr | None = Field(
        default=None,
        description="KESTREAM_STORAGE_S3_SECRET_ACCESS_KEY: S3 secret key (masked in dumps); "
        "or KESTREAM_STORAGE_S3_SECRET_ACCESS_KEY_FILE, a file holding it.",
    )
    storage_s3_secret_access_key_file: str | None = Field(
        default=None,
        description="KESTREAM_STORAGE_S3_SECRET_ACCESS_KEY_FILE: file holding the S3 secret key.",
    )
    output_inline_max_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="KESTREAM_OUTPUT_INLINE_MAX_BYTES: task outputs, execution inputs and "
        "restart snapshots larger than this (encoded) are kept in the internal storage and "
        "travel as a reference that expressions read transparently; 0: never (larger step "
        "outputs then fail their task run at the record limit).",
    )
    standalone_durable: bool = Field(
        default=True,
        description="KESTREAM_STANDALONE_DURABLE: `kestream standalone` on the embedded broker "
        "records every record of kestream's topics and the consumer groups' offsets in "
        "KESTREAM_DATA_DIR/broker and writes them back into the fresh broker at its next start; "
        "false: memory only, everything is lost when it stops.",
    )
    standalone_ack_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="KESTREAM_STANDALONE_ACK_TIMEOUT_S: with that durability, the API answers an "
        "execution it creates (or restarts) only once KESTREAM_DATA_DIR/broker holds it, so a "
        "kill -9 cannot lose it; past this many seconds without the mirror's word (or at once "
        "when the mirror is down) it answers 503 with the reason instead.",
    )
    standalone_process_per_role: bool = Field(
        default=False,
        description="KESTREAM_STANDALONE_PROCESS_PER_ROLE: false: `kestream standalone` runs the "
        "worker, the scheduler, the API and the first executor in one process (less memory, a "
        "faster start; a crash of one restarts all four), and each further executor "
        "(KESTREAM_EXECUTOR_STREAM_THREADS) in its own; true: one process per role instance, "
        "so a crashing role takes only itself down.",
    )
    standalone_groups: bool = Field(
        default=False,
        description="KESTREAM_STANDALONE_GROUPS: false: on its own embedded broker, which only "
        "its role processes reach, `kestream standalone` gives each executor a fixed share of "
        "the partitions and the worker all of its own, and its scheduler holds the lease, "
        "without consumer groups (no group joins to wait for at start, no heartbeats); offsets "
        "are still committed under the groups' names. true: they use consumer groups as on any "
        "other broker (for debugging). A broker given in KESTREAM_BROKER always uses groups.",
    )
    standalone_crash_limit: int = Field(
        default=5,
        ge=1,
        description="KESTREAM_STANDALONE_CRASH_LIMIT: `kestream standalone` restarts a role "
        "process that exits (after 0.5 s, doubling per recent crash); this many crashes of one "
        "role within KESTREAM_STANDALONE_CRASH_WINDOW_S stop it, naming the role.",
    )
    standalone_crash_window_s: float = Field(
        default=60.0,
        gt=0,
        description="KESTREAM_STANDALONE_CRASH_WINDOW_S: the window of "
        "KESTREAM_STANDALONE_CRASH_LIMIT, in seconds.",
    )
    standalone_restart_max_delay_s: float = Field(
        default=30.0,
        gt=0,
        description="KESTREAM_STANDALONE_RESTART_MAX_DELAY_S: the longest wait before "
        "`kestream standalone` starts a crashed role again.",
    )
    docker_runner: Literal["docker", "process"] = Field(
        default="docker",
        description="KESTREAM_DOCKER_RUNNER: where script tasks that ask for the Docker task "
        "runner run: docker (a reachable Docker engine, else the task fails saying so) or "
        "process (local processes, so published flows run unchanged without Docker).",
    )
    docker_allow_volumes: bool = Field(
        default=False,
        description="KESTREAM_DOCKER_ALLOW_VOLUMES: let flows mount host paths in Docker task "
        "runner containers (its volumes option); off, such a task fails: a flow author could "
        "mount any path the engine reaches.",
    )
    docker_allow_privileged: bool = Field(
        default=False,
        description="KESTREAM_DOCKER_ALLOW_PRIVILEGED: let flows run privileged Docker task "
        "runner containers (its privileged option: root on the engine's host); off, such a task "
        "fails.",
    )
    log_level: str = Field(
        default="INFO", description="KESTREAM_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="KESTREAM_LOG_FORMAT: text (readable lines) or json (one JSON object per "
        "line: time, level, logger, message, role, process); secrets are masked in both.",
    )

    @field_validator("env_vars_prefix")
    @classmethod
    def _env_prefix(cls, value: str) -> str:
        try:
            return check_env_prefix(value)
        except ValueError as exc:
            raise ValueError(f"KESTREAM_ENV_VARS_PREFIX: {exc}") from None

    @field_validator("api_cors_origins")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        """Each origin as a browser sends it in ``Origin``: lower case, no path, no slash."""
        if value is None:
            return None
        origins = []
        for raw in value.split(","):
            origin = raw.strip().rstrip("/").lower()
            if not origin:
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(
                    f"KESTREAM_API_CORS_ORIGINS: {raw.strip()!r} is not an origin: give "
                    "scheme://host[:port] (no path, no wildcard)"
                )
            origins.append(origin)
        return ",".join(origins)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: object) -> object:
        """Read each secret given as ``KESTREAM_<NAME>_FILE`` (the Docker and Kubernetes
        secrets convention), so that the secret never sits in a process environment, where
        other processes of the same user might read it (``/proc/<pid>/environ``)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in _SECRET_FILE_FIELDS:
            path = data.get(f"{name}_file")
            if not path:
                continue
            if data.get(name) is not None:
                raise ValueError(
                    f"KESTREAM_{name.upper()} and KESTREAM_{name.upper()}_FILE are both set: "
                    "give one"
                )
            try:
                with open(path, encoding="utf-8") as secret:
                    data[name] = secret.read().strip()
            except OSError as exc:
                raise ValueError(
                    f"KESTREAM_{name.upper()}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
        return data

    @model_validator(mode="after")
    def _credentials_pair(self) -> Settings:
        if (self.api_username is None) != (self.api_password is None):
            raise ValueError(
                "KESTREAM_API_USERNAME and KESTREAM_API_PASSWORD go together: set both or neither"
            )
        if self.api_password is not None and not self.api_password.get_secret_value():
            raise ValueError("KESTREAM_API_PASSWORD is empty")
        if self.api_username is not None and ":" in self.api_username:
            # HTTP Basic splits user and password at the first colon: this user could never log in.
            raise ValueError("KESTREAM_API_USERNAME cannot contain ':' (HTTP Basic's separator)")
        return self

    def session_timeout(self) -> int:
        """The consumer group session (ms): the setting, else Kafka's usual 10 s.

        On the embedded broker the roles' settings carry 4 s unless one is set
        (:func:`kestream.runtime.context.for_broker`): Tansu answers a group's first JoinGroup
        only after half the session timeout, rounded up to whole seconds (measured: 1 s at
        2 s, 2 s at 3 s and 4 s, 3 s at 6 s, 5 s at 10 s). A Tansu of one's own, like Kafka,
        may hold members of other machines, whose stalls the longer session absorbs."""
        return self.session_timeout_ms if self.session_timeout_ms is not None else 10_000

    def rebalance_timeout(self) -> int:
        """How long (ms) a group waits for its members to rejoin once a rebalance begins: what
        their revocation does (the worker's revoke grace, its commit, the executor's last
        flush and commit) must fit. aiokafka's default is the session, less than a worker's
        grace plus a commit on a busy machine. Tansu does not wait on it: it answers a
        group's first join, and ends every rebalance, half a session after it began."""
        grace_ms = int(self.worker_revoke_grace_s * 1000)
        return max(10_000, self.session_timeout() + grace_ms)

    @property
    def api_bearer_tokens(self) -> tuple[str, ...]:
        """The tokens of ``KESTREAM_API_TOKENS``, without blanks."""
        raw = self.api_tokens.get_secret_value() if self.api_tokens else ""
        return tuple(token.strip() for token in raw.replace("\n", ",").split(",") if token.strip())

    @property
    def api_credentials_set(self) -> bool:
        """The API has credentials to require (Basic, a bearer token, or both)."""
        return self.api_password is not None or bool(self.api_bearer_tokens)

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset((self.api_cors_origins or "").split(",")) - {""}

    @property
    def stream_threads(self) -> int:
        """Executor processes to run: the setting, or one per core."""
        return self.executor_stream_threads or (os.cpu_count() or 1)

    @property
    def task_threads(self) -> int:
        """Worker thread-pool slots: the setting, or 8 per core."""
        return self.worker_threads or 8 * (os.cpu_count() or 1)

    def topic(self, name: str) -> str:
        """The full name of one of kestream's topics."""
        return f"{self.topic_prefix}{name}"

    @property
    def data_path(self) -> Path:
        """``KESTREAM_DATA_DIR`` as a path: ``~`` expanded, and the default under
        ``$XDG_DATA_HOME`` when that is set (the XDG base directory rule)."""
        xdg = os.environ.get("XDG_DATA_HOME")
        if self.data_dir == DEFAULT_DATA_DIR and xdg:
            return Path(xdg) / "kestream"
        return Path(self.data_dir).expanduser()


@cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
