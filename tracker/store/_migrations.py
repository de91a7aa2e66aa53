from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from tracker.errors import ConfigError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The shapes of statement a migration may hold, and how each is rendered for a cluster.
_CREATE_TABLE = re.compile(r"^(CREATE TABLE IF NOT EXISTS `[^`]+`\.)(\w+)", re.MULTILINE)
_CREATE_VIEW = re.compile(
    r"^(CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?`[^`]+`\.)(\w+)", re.MULTILINE
)
_CREATE_MATERIALIZED_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (`[^`]+`\.\w+) TO (`[^`]+`\.\w+) AS\b",
    re.MULTILINE,
)
_FROM_TABLE = re.compile(r"\bFROM (`[^`]+`\.\w+)")
_DROP = re.compile(r"^DROP (VIEW|TABLE) IF EXISTS (`[^`]+`\.\w+)\s*$")
_INSERT_SELECT = re.compile(r"^INSERT INTO `[^`]+`\.\w+\b[^;]*?\bSELECT\b", re.DOTALL)
_ALTER_TABLE = re.compile(r"^(ALTER TABLE `[^`]+`\.)(\w+)", re.MULTILINE)
_ALTER_COLUMNS = re.compile(r"^\s*(ADD|DROP|MODIFY|COMMENT|RENAME) COLUMN\b", re.MULTILINE)
_ALTER_INDEX = re.compile(r"^\s*(ADD|DROP|MATERIALIZE|CLEAR) INDEX\b", re.MULTILINE)
_ENGINE = re.compile(r"^ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?", re.MULTILINE)
_SHARDING_KEY = re.compile(r"^-- sharding key: (.+)$", re.MULTILINE)
_JOIN = re.compile(r"(?<!GLOBAL )\b((?:LEFT |RIGHT |INNER |FULL )?(?:OUTER )?(?:ANY |ALL )?JOIN)\b")
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.MULTILINE)

# Where the replicas of a local table meet in ClickHouse Keeper; {shard} and {replica} are
# each server's macros, {database} and {table} ClickHouse fills in itself.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
LOCAL_SUFFIX = "_local"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str, cluster: str = "") -> list[str]:
        """The file's statements, split on ``;`` at line ends, with ``{db}`` filled in.

        With a ``cluster`` (TRACKER_CLICKHOUSE_CLUSTER), each is rendered for that ClickHouse
        cluster instead: see :func:`on_cluster`. Without one the text is the file's, as written.
        """
        text = self.sql.replace("{db}", f"`{database}`")
        found = [s.strip() for s in re.split(r";\s*$", text, flags=re.MULTILINE) if s.strip()]
        if not cluster:
            return found
        return [rendered for s in found for rendered in on_cluster(s, database, cluster)]


def on_cluster(statement: str, database: str, cluster: str) -> list[str]:
    """One single-node statement as the statements that do the same on a sharded, replicated
    cluster, all ``ON CLUSTER``:

    - ``CREATE TABLE t ... ENGINE = XMergeTree(args)`` becomes ``t_local`` with
      ``ReplicatedXMergeTree(path, '{replica}', args)`` on every shard, and ``t`` a ``Distributed``
      table over them, sharded by the statement's ``-- sharding key:`` line. Reads and writes go
      to ``t`` as on one node.
    - ``ALTER TABLE t ... COLUMN`` alters ``t_local`` and then ``t``; ``... INDEX`` (a
      data-skipping index) only ``t_local``, where the data is.
    - ``CREATE VIEW`` reads the distributed tables, with every JOIN made ``GLOBAL`` (the right side
      is gathered from all shards once, not joined shard by shard).
    - ``CREATE MATERIALIZED VIEW v TO t AS SELECT ... FROM s`` is made on every shard, from
      ``s_local`` to ``t_local``: each shard rolls up the rows it stores.
    - ``INSERT INTO t SELECT ...`` (a backfill) runs once, as written: the distributed tables
      read every shard and route each row to its shard.
    - ``DROP VIEW IF EXISTS v`` drops ``v`` on every server; ``DROP TABLE IF EXISTS t`` drops the
      distributed ``t``, then ``t_local`` on every shard.

    Anything else is refused, so that a new migration cannot land half-rendered on a cluster.
    """
    where = f" ON CLUSTER `{cluster}`"
    code = _COMMENT_LINE.sub("", statement).strip()
    if (table := _CREATE_TABLE.match(code)) is not None:
        return _create_table(statement, table, database, cluster, where)
    if (alter := _ALTER_TABLE.match(code)) is not None:
        if _ALTER_INDEX.match(code[alter.end() :]):
            # Data-skipping indexes live with the data: on the shards' tables only.
            head, name = alter.group(1), alter.group(2)
            return [f"{head}{name}{LOCAL_SUFFIX}{where}{code[alter.end() :]}"]
        if not _ALTER_COLUMNS.search(code[alter.end() :]):
            raise ConfigError(
                f"migration statement {code[:60]!r}... has no cluster rendering: only column "
                "changes are altered ON CLUSTER"
            )
        head, name = alter.group(1), alter.group(2)
        rest = code[alter.end() :]
        return [f"{head}{name}{LOCAL_SUFFIX}{where}{rest}", f"{head}{name}{where}{rest}"]
    if (materialized := _CREATE_MATERIALIZED_VIEW.match(code)) is not None:
        view_name, target = materialized.group(1), materialized.group(2)
        select = _FROM_TABLE.sub(rf"FROM \1{LOCAL_SUFFIX}", code[materialized.end() :], count=1)
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view_name}{where} "
            f"TO {target}{LOCAL_SUFFIX} AS{select}"
        ]
    if _INSERT_SELECT.match(code) is not None:
        return [code]
    if (drop := _DROP.match(code)) is not None:
        kind, name = drop.group(1), drop.group(2)
        if kind == "VIEW":
            return [f"DROP VIEW IF EXISTS {name}{where}"]
        return [
            f"DROP TABLE IF EXISTS {name}{where}",
            f"DROP TABLE IF EXISTS {name}{LOCAL_SUFFIX}{where}",
        ]
    if (view := _CREATE_VIEW.match(code)) is not None:
        return [_JOIN.sub(r"GLOBAL \1", f"{view.group(0)}{where}{code[view.end() :]}")]
    raise ConfigError(f"migration statement {code[:60]!r}... has no cluster rendering")


def _create_table(
    statement: str, table: re.Match[str], database: str, cluster: str, where: str
) -> list[str]:
    code = _COMMENT_LINE.sub("", statement).strip()
    head, name = table.group(1), table.group(2)
    qualified = head.removeprefix("CREATE TABLE IF NOT EXISTS ")
    sharding = _SHARDING_KEY.search(statement)
    if sharding is None:
        raise ConfigError(
            f"table {name} has no '-- sharding key: <expression>' line, so it cannot be "
            "distributed over a cluster"
        )
    engine = _ENGINE.search(code)
    if engine is None:
        raise ConfigError(f"table {name} is not a MergeTree table; it cannot be replicated")
    args = [f"'{REPLICA_PATH}'", "'{replica}'"]
    if engine.group(2):
        args.append(engine.group(2))
    replicated = f"ENGINE = Replicated{engine.group(1)}({', '.join(args)})"
    body = code[table.end() :]
    engine_at = engine.start() - table.end()
    local_body = body[:engine_at] + replicated + body[engine_at + len(engine.group(0)) :]
    local = f"{name}{LOCAL_SUFFIX}"
    distributed = (
        f"{head}{name}{where} AS {qualified}{local}\n"
        f"ENGINE = Distributed('{cluster}', '{database}', '{local}', {sharding.group(1).strip()})"
    )
    return [f"{head}{local}{where}{local_body}", distributed]


def load_migrations() -> list[Migration]:
    folder = resources.files("schemas").joinpath("clickhouse")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found
