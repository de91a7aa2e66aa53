"""The console's statement check: one read-only statement, or a reason why not.

The text is split into tokens by sqlglot's ClickHouse tokenizer, which follows ClickHouse's
lexical rules (strings with backslash escapes, quoted names in double quotes and backticks,
heredoc strings, ``--``, ``#`` and nested ``/* */`` comments). So a ``;`` or a word inside a
string, a quoted name or a comment never counts, and a comment between two words (``INTO/**/
OUTFILE``) does not hide them. The statement is then judged on its tokens. ClickHouse's own
``readonly`` setting is the second wall behind this one (tracker/store).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import TokenError
from sqlglot.tokenizer_core import Token, TokenType

from tracker.errors import QueryRefused

__all__ = ["MAX_QUERY_LENGTH", "ReadOnlyQuery", "check_query"]


class _Tokenizer(ClickHouse.Tokenizer):
    # sqlglot reads what follows SHOW, EXPLAIN or SYSTEM as one opaque string; every word counts here.
    COMMANDS: ClassVar[set[TokenType]] = set()


_DIALECT = ClickHouse()

# What a statement may start with. Each only reads; anything else (KILL, SET, SYSTEM, INSERT...) is refused.
_READING = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")

# Words that start a statement that writes or changes the server. After WITH's expressions, the
# statement proper must be a SELECT, not one of these.
_WRITING = {
    "INSERT",
    "ALTER",
    "DROP",
    "CREATE",
    "TRUNCATE",
    "RENAME",
    "DELETE",
    "UPDATE",
    "OPTIMIZE",
    "ATTACH",
    "DETACH",
    "EXCHANGE",
    "UNDROP",
    "GRANT",
    "REVOKE",
    "KILL",
    "SYSTEM",
    "SET",
    "USE",
    "BACKUP",
    "RESTORE",
    "MOVE",
    "REPLACE",
    "UPSERT",
    "MERGE",
}

# Token types whose text is data, not SQL: strings and numbers.
_LITERALS = {
    TokenType.STRING,
    TokenType.NATIONAL_STRING,
    TokenType.RAW_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.BIT_STRING,
    TokenType.HEX_STRING,
    TokenType.BYTE_STRING,
    TokenType.UNICODE_STRING,
    TokenType.NUMBER,
}

# Functions that read files or the host, or reach the network. Compared case-insensitively,
# by prefix so that their variants (s3Cluster, remoteSecure, executablePool...) are covered too.
_OUTSIDE_PREFIXES = (
    "file",
    "s3",
    "hdfs",
    "remote",
    "mysql",
    "postgresql",
    "jdbc",
    "odbc",
    "executable",
    "python",
    "sqlite",
    "mongodb",
    "redis",
    "azure",
    "iceberg",
    "deltalake",
    "hudi",
    "hive",
    "arrowflight",
    "ytsaurus",
    "paimon",
    "catboost",
)
_OUTSIDE_NAMES = {"url", "input", "gcs", "oss", "cosn", "cluster", "clusterallreplicas"}
# The system tables the console may read: the shape of the data and the engine, none of access
# control, server configuration, logs or other sessions' queries (which may carry secrets).
_SYSTEM_READABLE = {
    "one",
    "numbers",
    "numbers_mt",
    "zeros",
    "zeros_mt",
    "databases",
    "tables",
    "columns",
    "parts",
    "functions",
    "table_functions",
    "formats",
    "data_type_families",
    "time_zones",
    "settings",
    "merges",
    "mutations",
}
# What SHOW may not list: users, roles, grants, quotas, policies, profiles and running queries.
_SHOW_REFUSED = {
    "USERS",
    "USER",
    "ROLES",
    "ROLE",
    "GRANTS",
    "ACCESS",
    "QUOTA",
    "QUOTAS",
    "POLICIES",
    "POLICY",
    "ROW",
    "PROFILES",
    "PROFILE",
    "PROCESSLIST",
    "CURRENT",
    "ENABLED",
    "PRIVILEGES",
    "NAMED",
    "SERVER",
}
# ClickHouse's default max_query_size, in characters: longer SQL is refused before it is read.
MAX_QUERY_LENGTH = 256 * 1024
_FORMAT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class ReadOnlyQuery:
    """The one statement to run, without its trailing ``FORMAT``, and that format if it had one."""

    statement: str
    format: str | None


def check_query(sql: str) -> ReadOnlyQuery:
    """The statement in ``sql`` if it is one read-only statement; ``QueryRefused`` says why not."""
    if len(sql) > MAX_QUERY_LENGTH:
        raise QueryRefused(
            f"the SQL is {len(sql)} characters long; at most {MAX_QUERY_LENGTH} are read "
            "(ClickHouse's own max_query_size)"
        )
    try:
        tokens = _Tokenizer(dialect=_DIALECT).tokenize(sql)
    except TokenError:
        raise QueryRefused(
            "the SQL could not be read: a string, quoted name or /* comment */ is not closed"
        ) from None
    statements = _split(tokens)
    if not statements:
        raise QueryRefused("the SQL holds no statement")
    if len(statements) > 1:
        raise QueryRefused(
            f"one statement per request, found {len(statements)}: "
            "a ';' outside strings and comments ends a statement"
        )
    statement = statements[0]
    _check_kind(statement)
    for index, token in enumerate(statement):
        _check_token(statement, index, token)
    end, fmt = len(statement), None
    if (
        len(statement) > 2
        and _word(statement[-2]) == "FORMAT"
        and statement[-1].token_type not in _LITERALS | {TokenType.IDENTIFIER}
        and _FORMAT_NAME.match(statement[-1].text)
    ):
        end, fmt = len(statement) - 2, statement[-1].text
    return ReadOnlyQuery(sql[statement[0].start : statement[end - 1].end + 1], fmt)


def _split(tokens: list[Token]) -> list[list[Token]]:
    statements: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(token)
    return [s for s in statements if s]


def _word(token: Token) -> str:
    """The token's text in capitals if it is an unquoted word, else an empty string."""
    if token.token_type in _LITERALS or token.token_type == TokenType.IDENTIFIER:
        return ""
    return token.text.upper()


def _check_kind(statement: list[Token]) -> None:
    first = next((t for t in statement if t.token_type != TokenType.L_PAREN), statement[0])
    kind = _word(first)
    parenthesised = first is not statement[0]
    if kind not in _READING or (parenthesised and kind not in ("SELECT", "WITH")):
        shown = kind or first.text[:40]
        raise QueryRefused(
            f"the console only reads: one SELECT, WITH ... SELECT, SHOW, DESCRIBE, EXPLAIN "
            f"or EXISTS statement is allowed, not {shown}"
        )
    if kind == "WITH":
        _check_with_selects(statement)


def _check_with_selects(statement: list[Token]) -> None:
    """``WITH ... SELECT``: the first statement word outside parentheses must be SELECT."""
    depth = 0
    for token in statement:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and (word := _word(token)) in _WRITING | {"SELECT"}:
            if word != "SELECT":
                raise QueryRefused(
                    f"WITH ... {word} writes or changes the server; the console only reads: "
                    "WITH ... SELECT"
                )
            return


def _check_token(statement: list[Token], index: int, token: Token) -> None:
    word = _word(token)
    before = statement[index - 1] if index else None
    following = statement[index + 1] if index + 1 < len(statement) else None
    if word == "SHOW" and following is not None:
        shown = [_word(t) for t in statement[index + 1 : index + 3]]
        if shown[0] in _SHOW_REFUSED or (
            shown[0] == "CREATE" and shown[1:] and shown[1] in _SHOW_REFUSED
        ):
            raise QueryRefused(
                f"SHOW {' '.join(w for w in shown if w)} lists access control or other sessions; "
                "the console reads the tracker tables"
            )
    if (
        token.token_type not in _LITERALS
        and token.text.lower() == "system"
        and following is not None
        and following.token_type == TokenType.DOT
        and index + 2 < len(statement)
    ):
        table = statement[index + 2].text.lower()
        if table not in _SYSTEM_READABLE:
            raise QueryRefused(
                f"system.{table[:40]} is not readable from the console: it holds access "
                "control, server configuration, logs or other sessions' queries"
            )
    if word in ("OUTFILE", "INFILE"):
        raise QueryRefused(f"{word} reads or writes files on the server; the console only reads")
    if word == "SETTINGS" and (before is None or _word(before) not in (".", "SHOW", "CHANGED")):
        raise QueryRefused(
            "SETTINGS clauses are not allowed: every console query runs read-only with fixed "
            "limits (TRACKER_QUERY_MAX_SECONDS, TRACKER_QUERY_MAX_MEMORY_BYTES, "
            "TRACKER_QUERY_MAX_ROWS)"
        )
    if following is not None and following.token_type == TokenType.L_PAREN:
        name = token.text.lower() if token.token_type not in _LITERALS else ""
        if name == "merge":
            raise QueryRefused(
                "merge() reads any database's tables by pattern, system ones too; "
                "name the tracker tables instead"
            )
        if name and (
            name in _OUTSIDE_NAMES or name.startswith(_OUTSIDE_PREFIXES) or name.endswith("cluster")
        ):
            raise QueryRefused(
                f"{token.text}() reads files or reaches the network; "
                "the console reads only the tables in its database"
            )
