"""The console's statement check: one read-only statement passes, anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.errors import QueryRefused
from tracker.readonly_sql import check_query


@pytest.mark.parametrize(
    ("sql", "statement", "fmt"),
    [
        ("SELECT 1 /* ; */", "SELECT 1", None),
        ("SELECT ';'", "SELECT ';'", None),
        ("SELECT 1 -- INTO OUTFILE", "SELECT 1", None),
        ("SELECT 1 # INTO OUTFILE 'x'", "SELECT 1", None),
        ("SELECT 'it''s; INTO OUTFILE'", "SELECT 'it''s; INTO OUTFILE'", None),
        (r"SELECT 'a\'; DROP TABLE links'", r"SELECT 'a\'; DROP TABLE links'", None),
        ('SELECT "a;b" FROM links', 'SELECT "a;b" FROM links', None),
        ("SELECT `file`, url FROM links", "SELECT `file`, url FROM links", None),
        ("SELECT $$; KILL QUERY WHERE 1$$", "SELECT $$; KILL QUERY WHERE 1$$", None),
        ("SELECT /* a /* nested; */ b */ 1", "SELECT /* a /* nested; */ b */ 1", None),
        ("  select 1;  ", "select 1", None),
        ("SELECT 1 FORMAT JSONEachRow;", "SELECT 1", "JSONEachRow"),
        (
            "WITH t AS (SELECT 1 AS n) SELECT n FROM t",
            "WITH t AS (SELECT 1 AS n) SELECT n FROM t",
            None,
        ),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)", None),
        ("SHOW TABLES LIKE ';'", "SHOW TABLES LIKE ';'", None),
        ("DESCRIBE TABLE touchpoints", "DESCRIBE TABLE touchpoints", None),
        ("DESC links", "DESC links", None),
        (
            "EXPLAIN SELECT count() FROM touchpoints",
            "EXPLAIN SELECT count() FROM touchpoints",
            None,
        ),
        ("EXISTS TABLE links", "EXISTS TABLE links", None),
        (
            "SELECT name, value FROM system.settings",
            "SELECT name, value FROM system.settings",
            None,
        ),
        ("SELECT URLHash(url) FROM t", "SELECT URLHash(url) FROM t", None),
    ],
)
def test_one_read_only_statement_passes_as_written(
    sql: str, statement: str, fmt: str | None
) -> None:
    checked = check_query(sql)
    assert (checked.statement, checked.format) == (statement, fmt)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT 'x' INTO OUTFILE 'victim.txt' TRUNCATE FORMAT TSVRaw", "OUTFILE"),
        ("SELECT 'x' INTO OUTFILE 'victim.txt' APPEND", "OUTFILE"),
        ("SELECT 'x' INTO OUTFILE 'victim.gz' COMPRESSION 'gzip' LEVEL 3", "OUTFILE"),
        ("SELECT 1 INTO/**/OUTFILE 'x'", "OUTFILE"),
        ("SELECT 1 INTO -- c\nOUTFILE 'x'", "OUTFILE"),
        ("select 1 into outfile 'x' and stdout", "OUTFILE"),
        ("KILL QUERY WHERE 1", "not KILL"),
        ("SELECT 'hx-leak'; DROP TABLE links", "one statement per request, found 2"),
        ("SELECT 1; SELECT 2", "one statement per request"),
        ("SELECT 1 /* c */; -- d\n SELECT 2", "one statement per request"),
        ("DROP TABLE links", "not DROP"),
        ("WITH 1 AS n DROP TABLE links", "WITH ... DROP"),
        ("WITH t AS (SELECT 1) INSERT INTO links SELECT * FROM t", "WITH ... INSERT"),
        ("INSERT INTO links SELECT * FROM links", "not INSERT"),
        ("SET readonly = 0", "not SET"),
        ("SYSTEM SHUTDOWN", "not SYSTEM"),
        ("OPTIMIZE TABLE touchpoints FINAL", "not OPTIMIZE"),
        ('"SELECT" 1', "the console only reads"),
        ("(DROP TABLE links)", "the console only reads"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
        ("SELECT file('/etc/passwd')", "file()"),
        ("SELECT * FROM url('http://127.0.0.1:1/', 'TSV', 'a String')", "url()"),
        ("SELECT * FROM `url`('http://127.0.0.1:1/', 'TSV', 'a String')", "url()"),
        ("SELECT * FROM URL/**/('http://127.0.0.1:1/')", "URL()"),
        ("SELECT * FROM s3('https://b.example/k')", "s3()"),
        ("SELECT * FROM remoteSecure('h', system.one)", "remoteSecure()"),
        ("SELECT * FROM mysql('h:3306', 'd', 't', 'u', 'p')", "mysql()"),
        ("SELECT * FROM postgresql('h', 'd', 't', 'u', 'p')", "postgresql()"),
        ("SELECT * FROM executable('ls', 'TSV', 'a String')", "executable()"),
        ("SELECT * FROM input('a Int32')", "input()"),
        ("SELECT * FROM hdfs('hdfs://h/f', 'TSV')", "hdfs()"),
        ("SELECT * FROM jdbc('d', 't')", "jdbc()"),
        ("SELECT * FROM odbc('d', 't')", "odbc()"),
        ("SELECT * FROM urlCluster('c', 'http://h/')", "urlCluster()"),
        ("SELECT * FROM Python(frame)", "Python()"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT 1 SETTINGS max_execution_time = 3600", "SETTINGS"),
        ("SELECT 1 FORMAT Template SETTINGS format_template_row = '/etc/passwd'", "SETTINGS"),
        ("INSERT INTO t FROM INFILE '/etc/passwd'", "the console only reads"),
        ("SELECT 'not closed", "not closed"),
        ("SELECT 1 /* not closed", "not closed"),
        ("", "no statement"),
        (" ; ;; -- only a comment", "no statement"),
    ],
)
def test_everything_else_is_refused_with_a_reason(sql: str, reason: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        check_query(sql)
    assert reason in str(refused.value)


# Text that is data or comment in ClickHouse, however odd: anything but what would close it.
_ANY = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
_string = _ANY.map(lambda s: "'" + s.replace("\\", "\\\\").replace("'", "''") + "'")
_name = _ANY.filter(bool).map(lambda s: "`" + s.replace("\\", "\\\\").replace("`", "``") + "`")
_comment = st.one_of(
    _ANY.filter(lambda s: "/*" not in s and "*/" not in s and not s.endswith("/")).map(
        lambda s: f"/*{s}*/"
    ),
    _ANY.filter(lambda s: "\n" not in s).map(lambda s: f"-- {s}\n"),
)
_value = st.one_of(_string, st.integers(0, 10**9).map(str), _name, st.just("count()"))
_space = st.one_of(st.just(" "), st.just("\n"), _comment.map(lambda c: f" {c} "))


@st.composite
def single_select(draw: st.DrawFn, ending: bool = True) -> str:
    values = draw(st.lists(_value, min_size=1, max_size=4))
    text = "SELECT" + draw(_space) + ", ".join(values)
    if draw(st.booleans()):
        text += draw(_space) + "FROM" + draw(_space) + draw(st.sampled_from(["links", "calls"]))
    if draw(st.booleans()):
        text += draw(_space) + "WHERE" + draw(_space) + draw(_value) + " = " + draw(_value)
    if draw(st.booleans()):
        text += draw(_space) + f"LIMIT {draw(st.integers(0, 100))}"
    if not ending:
        return text
    return text + draw(st.sampled_from(["", ";", " ;; ", " -- trailing\n"]))


_second = st.one_of(
    single_select(),
    st.sampled_from(["DROP TABLE links", "KILL QUERY WHERE 1", "SET readonly = 0", "SELECT 2"]),
)


@settings(max_examples=400, deadline=None)
@given(single_select())
def test_any_single_select_passes(sql: str) -> None:
    checked = check_query(sql)
    assert checked.statement.startswith("SELECT")
    assert checked.format is None


@settings(max_examples=400, deadline=None)
@given(single_select(ending=False), _space, _second)
def test_a_semicolon_outside_strings_and_comments_before_a_second_statement_is_refused(
    first: str, gap: str, second: str
) -> None:
    with pytest.raises(QueryRefused, match="one statement per request"):
        check_query(first + ";" + gap + second)
