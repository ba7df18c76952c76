//! `postgres_changes` filters, parsed exactly as Supabase Realtime's
//! `Subscriptions.parse_subscription_params/1` does: `col=[not.]op.value`,
//! several joined by commas (AND), `in.(a,b,...)` kept as a Postgres array
//! literal, PostgREST-style double quotes. Values stay text here; Postgres
//! checks and compares them as the column's type, as Supabase's SQL does.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Is,
    Match,
    Imatch,
    IsDistinct,
}

impl Op {
    /// In the order of Supabase's `realtime.equality_op` enum, which the
    /// derived `Ord` follows.
    const ALL: [Op; 13] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Like,
        Op::Ilike,
        Op::Is,
        Op::Match,
        Op::Imatch,
        Op::IsDistinct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

pub const MAX_IN_VALUES: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    pub column: String,
    pub op: Op,
    /// As Supabase keeps it: for `in`, the Postgres array literal `{...}`
    /// built from the parenthesised list verbatim; otherwise the unquoted value.
    pub value: String,
    pub negate: bool,
}

impl Filter {
    /// Number of elements in an `in` filter's array literal (top-level,
    /// respecting quotes and backslashes), for the 100-value limit check
    /// before Postgres sees the literal. Other operators have one value.
    pub fn in_len(&self) -> usize {
        if self.op != Op::In {
            return 1;
        }
        let inner = self.value.strip_prefix('{').and_then(|v| v.strip_suffix('}')).unwrap_or(&self.value);
        // Postgres's array whitespace, not Unicode's: `{ }` is empty, `{ a }` is not.
        if inner.trim_matches([' ', '\t', '\n', '\r', '\x0B', '\x0C']).is_empty() {
            return 0;
        }
        let (mut depth, mut quoted, mut commas) = (0usize, false, 0);
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => quoted = !quoted,
                '{' if !quoted => depth += 1,
                '}' if !quoted => depth = depth.saturating_sub(1),
                ',' if !quoted && depth == 0 => commas += 1,
                _ => {}
            }
        }
        commas + 1
    }
}

impl fmt::Display for Filter {
    /// As Supabase lists filters in its error messages: `{"subject", "eq", "hey", false}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negate = Term::Atom(if self.negate { "true" } else { "false" });
        let terms = [Term::Str(&self.column), Term::Str(self.op.name()), Term::Str(&self.value), negate];
        f.write_str(&inspect('{', &terms, '}'))
    }
}

const EMPTY_SEGMENT: &str = "filter must not contain empty segments (check for extra commas)";

/// Parses a binding's `filter`; an empty or blank filter means none. The
/// error is the complete message Supabase sends the client.
pub fn parse(filter: &str) -> Result<Vec<Filter>, String> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(filter)
        .into_iter()
        .map(parse_segment)
        .collect::<Result<_, _>>()
        .map_err(|reason| format!("Error parsing `filter` params: {reason}"))
}

/// One `col=[not.]op.value`. Where Supabase's pattern match fails, its
/// message is the `inspect` of the pieces it had split so far.
fn parse_segment(segment: &str) -> Result<Filter, String> {
    let segment = segment.trim();
    if segment.is_empty() {
        return Err(EMPTY_SEGMENT.to_owned());
    }
    let Some((column, rest)) = segment.split_once('=') else {
        return Err(inspect('[', &[Term::Str(segment)], ']'));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(op_value) => (true, op_value),
        None => (false, rest),
    };
    let Some((op, value)) = op_value.split_once('.') else {
        return Err(inspect('[', &[Term::Str(op_value)], ']'));
    };
    let Some(op) = Op::from_name(op) else {
        return Err(inspect('[', &[Term::Str(op), Term::Str(value)], ']'));
    };
    let value = if op == Op::In {
        match value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            Some(inner) => format!("{{{inner}}}"),
            None => return Err("`in` filter value must be wrapped by parentheses".to_owned()),
        }
    } else {
        unquote(value)
    };
    Ok(Filter { column: column.to_owned(), op, value, negate })
}

/// Splits at commas outside parentheses and double quotes. A quote opens
/// only right after `.`, `(` or a comma inside parentheses (a top-level comma
/// resets what came before), so `5" tall` protects nothing; inside quotes a
/// backslash keeps the next byte from closing them.
fn split_top_level(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut prev, mut start, mut i) = (0usize, false, 0u8, 0, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if quoted {
            match b {
                b'\\' => i += 1,
                b'"' => (quoted, prev) = (false, b),
                _ => {}
            }
        } else {
            match b {
                b'"' if matches!(prev, b'.' | b'(' | b',') => quoted = true,
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    (start, prev, i) = (i + 1, 0, i + 1);
                    continue;
                }
                _ => {}
            }
            prev = b;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// PostgREST's quoting: `"a\"b"` → `a"b` when the first unescaped quote
/// after the opening one is the last character; anything else is literal.
fn unquote(value: &str) -> String {
    let Some(quoted) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.as_str().is_empty() => return out,
            '"' => break,
            '\\' => match chars.next() {
                Some(c) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    value.to_owned()
}

/// An item of a list or tuple rendered the way Elixir's `inspect` does.
enum Term<'a> {
    Str(&'a str),
    Atom(&'static str),
}

/// Elixir's `inspect/1` (default options, no line width) of a list or
/// tuple: at most 100 items, and bytes of non-printable strings, in all;
/// printable strings escaped and cut after 4096 characters.
fn inspect(open: char, terms: &[Term], close: char) -> String {
    let mut limit = 100usize;
    let mut docs = Vec::new();
    for term in terms {
        if limit == 0 {
            docs.push("...".to_owned());
            break;
        }
        limit -= 1;
        docs.push(match term {
            Term::Atom(atom) => (*atom).to_owned(),
            Term::Str(s) if printable(s) => inspect_str(s),
            Term::Str(s) => {
                let mut bytes: Vec<String> = s.bytes().take(limit).map(|b| b.to_string()).collect();
                if s.len() > limit {
                    bytes.push("...".to_owned());
                }
                limit = limit.saturating_sub(s.len());
                format!("<<{}>>", bytes.join(", "))
            }
        });
    }
    format!("{open}{}{close}", docs.join(", "))
}

const PRINTABLE_LIMIT: usize = 4096;

/// Elixir's `String.printable?/2` over the characters `inspect` would show.
fn printable(s: &str) -> bool {
    s.chars().take(PRINTABLE_LIMIT).all(|c| {
        printable_char(c) || matches!(c, '\n' | '\r' | '\t' | '\x0B' | '\x08' | '\x0C' | '\x1B' | '\x7F' | '\x07')
    })
}

fn printable_char(c: char) -> bool {
    matches!(c as u32, 0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// A printable string as Elixir's `inspect` quotes it (`Code.Identifier.escape/3`).
fn inspect_str(s: &str) -> String {
    let mut out = String::from("\"");
    let mut rest = s;
    for _ in 0..PRINTABLE_LIMIT {
        if let Some(after) = rest.strip_prefix("#{") {
            out.push_str("\\#{");
            rest = after;
            continue;
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        rest = &rest[c.len_utf8()..];
        match c {
            '"' => out.push_str("\\\""),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x7F' => out.push_str("\\d"),
            '\x1B' => out.push_str("\\e"),
            '\x0C' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0B' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            // Invisible or confusable spaces and marks.
            '\u{FEFF}'
            | '\u{2061}'..='\u{2064}'
            | '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FFF9}'..='\u{FFFC}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{034F}'
            | '\u{00A0}'
            | '\u{200B}'
            | '\u{2060}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{2000}'..='\u{200A}'
            | '\u{205F}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c if printable_char(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push_str(&format!("\\x{{{:04X}}}", c as u32)),
        }
    }
    out.push('"');
    if !rest.is_empty() {
        out.push_str(" <> ...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(column: &str, op: Op, value: &str, negate: bool) -> Filter {
        Filter { column: column.into(), op, value: value.into(), negate }
    }

    fn ok(filter: &str) -> Vec<Filter> {
        parse(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"))
    }

    fn err(reason: &str) -> Result<Vec<Filter>, String> {
        Err(format!("Error parsing `filter` params: {reason}"))
    }

    #[test]
    fn research_table() {
        assert_eq!(ok("subject=eq.hey"), [f("subject", Op::Eq, "hey", false)]);
        assert_eq!(ok("subject=in.(hidee,ho)"), [f("subject", Op::In, "{hidee,ho}", false)]);
        assert_eq!(ok("subject=not.like.hey%"), [f("subject", Op::Like, "hey%", true)]);
        assert_eq!(ok("id=gt.0,id=lt.100"), [f("id", Op::Gt, "0", false), f("id", Op::Lt, "100", false)]);
        assert_eq!(
            ok("name=in.(red,blue),quantity=gt.0"),
            [f("name", Op::In, "{red,blue}", false), f("quantity", Op::Gt, "0", false)]
        );
        assert_eq!(
            ok("a=eq.x),b=eq.y),c=eq.z"),
            [f("a", Op::Eq, "x)", false), f("b", Op::Eq, "y)", false), f("c", Op::Eq, "z", false)]
        );
        assert_eq!(ok(r#"name=eq.O'Brien "x""#), [f("name", Op::Eq, r#"O'Brien "x""#, false)]);
        assert_eq!(ok(r#"name=eq."a,b",id=gt.0"#), [f("name", Op::Eq, "a,b", false), f("id", Op::Gt, "0", false)]);
        assert_eq!(ok(r#"name=eq."a.b:c(d)""#), [f("name", Op::Eq, "a.b:c(d)", false)]);
        assert_eq!(ok(r#"name=eq."she said \"hi\"""#), [f("name", Op::Eq, r#"she said "hi""#, false)]);
        assert_eq!(ok(r#"path=eq."C:\\tmp""#), [f("path", Op::Eq, r"C:\tmp", false)]);
        assert_eq!(ok(r#"path=eq."C:\new""#), [f("path", Op::Eq, "C:new", false)]);
        assert_eq!(ok(r#"name=eq."""#), [f("name", Op::Eq, "", false)]);
        assert_eq!(ok(r#"name=eq." a ""#), [f("name", Op::Eq, " a ", false)]);
        assert_eq!(ok(r#"name=eq."unterminated"#), [f("name", Op::Eq, r#""unterminated"#, false)]);
        assert_eq!(ok(r#"name=eq."ab"cd"#), [f("name", Op::Eq, r#""ab"cd"#, false)]);
        assert_eq!(
            ok(r#"desc=eq.5" tall,id=gt.0"#),
            [f("desc", Op::Eq, r#"5" tall"#, false), f("id", Op::Gt, "0", false)]
        );
        assert_eq!(ok("flag=is.true"), [f("flag", Op::Is, "true", false)]);
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("   "), Ok(vec![]));
        assert_eq!(parse("subject=foo.hey"), err(r#"["foo", "hey"]"#));
        assert_eq!(parse("undefined"), err(r#"["undefined"]"#));
        assert_eq!(parse("wrong"), err(r#"["wrong"]"#));
        let empty = err("filter must not contain empty segments (check for extra commas)");
        for filter in ["id=gt.0,", ",id=gt.0", "a=eq.1,,b=eq.2", "a=eq.1, ,b=eq.2"] {
            assert_eq!(parse(filter), empty, "{filter}");
        }
        assert_eq!(parse("id=in.1"), err("`in` filter value must be wrapped by parentheses"));
        assert_eq!(parse("id=eq"), err(r#"["eq"]"#));
    }

    #[test]
    fn supabase_test_suite_cases() {
        assert_eq!(ok("id=eq.5"), [f("id", Op::Eq, "5", false)]);
        assert_eq!(
            ok("id=in.(1,2,3),details=eq.active"),
            [f("id", Op::In, "{1,2,3}", false), f("details", Op::Eq, "active", false)]
        );
        assert_eq!(
            ok("name=in.(red,blue,green),status=in.(active,inactive)"),
            [f("name", Op::In, "{red,blue,green}", false), f("status", Op::In, "{active,inactive}", false)]
        );
        assert_eq!(ok("name=not.neq.a'b"), [f("name", Op::Neq, "a'b", true)]);
        assert_eq!(ok("name=in.(O'Brien,Smith)"), [f("name", Op::In, "{O'Brien,Smith}", false)]);
        assert_eq!(ok(r#"name=eq."a,b""#), [f("name", Op::Eq, "a,b", false)]);
        assert_eq!(ok(r#"name=not.neq."a,b""#), [f("name", Op::Neq, "a,b", true)]);
        assert_eq!(ok(r#"tags=in.("a,b",c)"#), [f("tags", Op::In, r#"{"a,b",c}"#, false)]);
        assert_eq!(ok(r#"tags=in.("a,b","c,d")"#), [f("tags", Op::In, r#"{"a,b","c,d"}"#, false)]);
        assert_eq!(ok("details=like.hel%"), [f("details", Op::Like, "hel%", false)]);
        assert_eq!(ok("id=not.eq.5"), [f("id", Op::Eq, "5", true)]);
        assert_eq!(ok("id=eq.5,id=in.(1,2)"), [f("id", Op::Eq, "5", false), f("id", Op::In, "{1,2}", false)]);
        assert_eq!(parse("id=gt.0,id=foo.100"), err(r#"["foo", "100"]"#), "the first bad segment is reported");
    }

    #[test]
    fn every_operator() {
        for op in Op::ALL {
            let value = if op == Op::In { "{1}" } else { "1" };
            let text = if op == Op::In { "(1)" } else { "1" };
            assert_eq!(ok(&format!("c={}.{text}", op.name())), [f("c", op, value, false)]);
            assert_eq!(ok(&format!("c=not.{}.{text}", op.name())), [f("c", op, value, true)]);
        }
        assert_eq!(Op::IsDistinct.name(), "isdistinct");
        assert!(Op::ALL.windows(2).all(|w| w[0] < w[1]), "Ord follows realtime.equality_op");
    }

    #[test]
    fn negation() {
        assert_eq!(ok("id=not.in.(1,2)"), [f("id", Op::In, "{1,2}", true)]);
        assert_eq!(ok("x=not.is.null"), [f("x", Op::Is, "null", true)]);
        assert_eq!(ok("x=not.isdistinct.5"), [f("x", Op::IsDistinct, "5", true)]);
        assert_eq!(ok("x=not.imatch.^a.*b$"), [f("x", Op::Imatch, "^a.*b$", true)]);
        assert_eq!(ok(r#"x=not.ilike."%a,b%""#), [f("x", Op::Ilike, "%a,b%", true)]);
        assert_eq!(parse("x=not.not.eq.1"), err(r#"["not", "eq.1"]"#), "one `not.` only");
        assert_eq!(parse("x=NOT.eq.1"), err(r#"["NOT", "eq.1"]"#), "case matters");
        assert_eq!(parse("x=not.eq"), err(r#"["eq"]"#));
        assert_eq!(parse("x=not."), err(r#"[""]"#));
        assert_eq!(parse("x=not"), err(r#"["not"]"#));
    }

    #[test]
    fn and_of_several_filters() {
        assert_eq!(
            ok(" a=eq.1 ,b=not.in.(2,\"3,4\") ,  c=is.null,d=match.\"x,y\""),
            [
                f("a", Op::Eq, "1", false),
                f("b", Op::In, r#"{2,"3,4"}"#, true),
                f("c", Op::Is, "null", false),
                f("d", Op::Match, "x,y", false),
            ]
        );
        assert_eq!(ok(r#"t=in.(")",a),b=eq.1"#), [f("t", Op::In, r#"{")",a}"#, false), f("b", Op::Eq, "1", false)]);
        assert_eq!(ok("a=eq.(x,y),b=eq.1"), [f("a", Op::Eq, "(x,y)", false), f("b", Op::Eq, "1", false)]);
        assert_eq!(ok("a=eq.(x,b=eq.1"), [f("a", Op::Eq, "(x,b=eq.1", false)], "an open parenthesis keeps commas");
    }

    #[test]
    fn splitting_and_quotes() {
        // A quote opens only after `.`, `(` or a comma inside parentheses;
        // a top-level comma does not count, so the next comma still splits.
        assert_eq!(
            ok(r#"a=eq.1,"b=eq.2,c=eq.3"#),
            [f("a", Op::Eq, "1", false), f("\"b", Op::Eq, "2", false), f("c", Op::Eq, "3", false)]
        );
        assert_eq!(ok(r#"a=in.(x,"y,z")"#), [f("a", Op::In, r#"{x,"y,z"}"#, false)]);
        // Inside quotes a backslash protects the next character, and is kept.
        assert_eq!(ok(r#"a=eq."x\",y",b=eq.2"#), [f("a", Op::Eq, r#"x",y"#, false), f("b", Op::Eq, "2", false)]);
        assert_eq!(ok(r#"a=in.("x\",y"),b=eq.2"#), [f("a", Op::In, r#"{"x\",y"}"#, false), f("b", Op::Eq, "2", false)]);
        // An unterminated quote swallows the rest.
        assert_eq!(ok(r#"a=eq."x,b=eq.2"#), [f("a", Op::Eq, r#""x,b=eq.2"#, false)]);
        assert_eq!(ok(r#"a=eq."x\"#), [f("a", Op::Eq, r#""x\"#, false)]);
        // Only the first `=` and the first `.` after the operator separate.
        assert_eq!(ok("a=eq.b=c.d"), [f("a", Op::Eq, "b=c.d", false)]);
        assert_eq!(ok("a.b=eq.1"), [f("a.b", Op::Eq, "1", false)]);
        assert_eq!(ok("a =eq.1"), [f("a ", Op::Eq, "1", false)], "the column is not trimmed inside the segment");
        assert_eq!(ok("=eq.1"), [f("", Op::Eq, "1", false)], "the empty column is for SQL to reject");
        assert_eq!(ok("a=eq."), [f("a", Op::Eq, "", false)]);
        assert_eq!(ok("a=eq.x "), [f("a", Op::Eq, "x", false)]);
        assert_eq!(ok("\u{3000}a=eq.é\u{a0}"), [f("a", Op::Eq, "é", false)], "Unicode whitespace is trimmed");
        assert_eq!(ok("a=eq.\"é\\ü\""), [f("a", Op::Eq, "éü", false)]);
    }

    #[test]
    fn unquoting() {
        assert_eq!(unquote(r#""a\"b""#), r#"a"b"#);
        assert_eq!(unquote(r#""a"b""#), r#""a"b""#, "an unescaped quote before the end");
        assert_eq!(unquote(r#""a\""#), r#""a\""#, "the closing quote is escaped");
        assert_eq!(unquote(r#""a\"#), r#""a\"#);
        assert_eq!(unquote(r#"""#), r#"""#);
        assert_eq!(unquote(r#"a"b""#), r#"a"b""#);
        assert_eq!(unquote(r#""\\\"""#), r#"\""#);
    }

    #[test]
    fn in_needs_parentheses() {
        assert_eq!(ok("a=in.()"), [f("a", Op::In, "{}", false)]);
        assert_eq!(ok("a=in.(a)b)"), [f("a", Op::In, "{a)b}", false)]);
        assert_eq!(ok(r#"a=in.( "x" , y )"#), [f("a", Op::In, r#"{ "x" , y }"#, false)], "kept verbatim");
        for filter in ["a=in.(", "a=in.)", "a=in.", "a=in.(1,2", "a=in.1,2)", "a=not.in.x"] {
            assert_eq!(parse(filter), err("`in` filter value must be wrapped by parentheses"), "{filter}");
        }
    }

    #[test]
    fn errors_are_elixir_inspect() {
        assert_eq!(parse(r#"a"b\c"#), err(r#"["a\"b\\c"]"#));
        assert_eq!(parse("a=b\tc"), err(r#"["b\tc"]"#));
        assert_eq!(parse("x=#{y}.1"), err(r#"["\#{y}", "1"]"#));
        assert_eq!(parse("x=\u{7f}\u{7}\u{8}\u{b}\u{c}\u{1b}\r\n.1"), err(r#"["\d\a\b\v\f\e\r\n", "1"]"#));
        assert_eq!(parse("x=\u{a0}\u{200b}\u{feff}é日.1"), err(r#"["\u00A0\u200B\uFEFFé日", "1"]"#));
        assert_eq!(parse("x=\u{1}"), err("[<<1>>]"), "not printable: shown as bytes");
        assert_eq!(parse("x=é\u{85}.1"), err(r#"[<<195, 169, 194, 133>>, "1"]"#));
        assert_eq!(parse("x=op.\u{0}"), err(r#"["op", <<0>>]"#));
    }

    #[test]
    fn inspect_limits() {
        // Strings are cut after 4096 characters, `#{` counting as one.
        let long = "a".repeat(5000);
        assert_eq!(parse(&long), err(&format!(r#"["{}" <> ...]"#, "a".repeat(4096))));
        let exact = "a".repeat(4096);
        assert_eq!(parse(&exact), err(&format!(r#"["{exact}"]"#)));
        let interpolations = "#{".repeat(2100);
        assert_eq!(parse(&interpolations), err(&format!(r#"["{}"]"#, r"\#{".repeat(2100))));
        // Only the first 4096 characters must be printable; a later one is escaped.
        let escaped = format!("{interpolations}\u{1}\u{0}\u{9f}\u{ffff}");
        let shown = format!(r"{}\x01\0\x9F\x{{FFFF}}", r"\#{".repeat(2100));
        assert_eq!(parse(&escaped), err(&format!(r#"["{shown}"]"#)));
        let late = format!("{}\u{1}", "a".repeat(4096));
        assert_eq!(parse(&late), err(&format!(r#"["{}" <> ...]"#, "a".repeat(4096))));
        // 100 items and bytes in all, one spent on each item.
        let ones = |n| vec!["1"; n].join(", ");
        assert_eq!(parse(&"\u{1}".repeat(99)), err(&format!("[<<{}>>]", ones(99))));
        assert_eq!(parse(&"\u{1}".repeat(100)), err(&format!("[<<{}, ...>>]", ones(99))));
        let op = "\u{1}".repeat(98);
        assert_eq!(parse(&format!("x={op}.\u{1}")), err(&format!("[<<{}>>, <<...>>]", ones(98))));
        assert_eq!(
            parse(&format!("x={op}.a")),
            err(&format!(r#"[<<{}>>, "a"]"#, ones(98))),
            "a string spends no bytes"
        );
        assert_eq!(parse(&format!("x={op}\u{1}.a")), err(&format!("[<<{}>>, ...]", ones(99))));
    }

    #[test]
    fn display_matches_supabase_messages() {
        assert_eq!(f("subject", Op::Eq, "hey", false).to_string(), r#"{"subject", "eq", "hey", false}"#);
        assert_eq!(f("id", Op::In, "{1,2}", true).to_string(), r#"{"id", "in", "{1,2}", true}"#);
        assert_eq!(f("d", Op::IsDistinct, "x", false).to_string(), r#"{"d", "isdistinct", "x", false}"#);
        assert_eq!(f("n", Op::Eq, r#"say "hi"\"#, false).to_string(), r#"{"n", "eq", "say \"hi\"\\", false}"#);
        assert_eq!(f("n", Op::Eq, "\u{1}", false).to_string(), r#"{"n", "eq", <<1>>, false}"#);
        assert_eq!(ok("subject=eq.hey")[0].to_string(), r#"{"subject", "eq", "hey", false}"#);
    }

    #[test]
    fn in_lengths() {
        let within = |value: &str| f("c", Op::In, value, false).in_len();
        assert_eq!(within("{1,2,3}"), 3);
        assert_eq!(within("{}"), 0);
        assert_eq!(within("{ }"), 0);
        assert_eq!(within("{\u{a0}}"), 1, "only Postgres's whitespace is blank");
        assert_eq!(within(r#"{""}"#), 1);
        assert_eq!(within("{NULL}"), 1);
        assert_eq!(within("{,}"), 2, "malformed; Postgres rejects it");
        assert_eq!(within(r#"{"a,b",c}"#), 2);
        assert_eq!(within(r#"{"a\",b",c}"#), 2);
        assert_eq!(within(r#"{a\,b,c}"#), 2, "a backslash escapes outside quotes too");
        assert_eq!(within(r#"{"}",{"}"#), 2);
        assert_eq!(within("{{1,2},{3,4}}"), 2, "top-level elements of a 2-D array");
        assert_eq!(ok(&format!("c=in.({})", vec!["7"; 101].join(",")))[0].in_len(), 101);
        assert_eq!(ok(r#"c=in.("a,b",c,"d\"e")"#)[0].in_len(), 3);
        assert_eq!(f("c", Op::Eq, "1,2", false).in_len(), 1);
        assert_eq!(MAX_IN_VALUES, 100);
    }

    /// Text that parses back to `filters`, given columns the splitter sees
    /// as plain text: values quoted, `in` lists as Supabase kept them.
    fn render(filters: &[Filter]) -> String {
        let one = |f: &Filter| {
            let value = match f.op {
                Op::In => format!("({})", &f.value[1..f.value.len() - 1]),
                _ => quote(&f.value),
            };
            format!("{}={}{}.{value}", f.column, if f.negate { "not." } else { "" }, f.op.name())
        };
        filters.iter().map(one).collect::<Vec<_>>().join(",")
    }

    /// A double-quoted string, as PostgREST and Postgres arrays read it.
    fn quote(value: &str) -> String {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }

    fn plain_column(column: &str) -> bool {
        !column.contains(['"', '(', ')', ','])
    }

    fn filterish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            r#"[a-z=.,() "\\]{0,30}"#,
            r#"( ?[a-z"(]{0,3} ?=(not\.)?(eq|in|is|foo|)\.[a-z,() "\\é]{0,12},?){1,4}"#,
        ]
    }

    proptest! {
        #[test]
        fn parse_is_total_and_stable(input in filterish()) {
            match parse(&input) {
                Err(e) => prop_assert!(e.starts_with("Error parsing `filter` params: "), "{e}"),
                Ok(filters) => {
                    for f in &filters {
                        prop_assert!(f.op != Op::In || (f.value.starts_with('{') && f.value.ends_with('}')), "{f:?}");
                        let _ = (f.to_string(), f.in_len());
                    }
                    let plain: Vec<Filter> = filters.into_iter().filter(|f| plain_column(&f.column)).collect();
                    let text = render(&plain);
                    prop_assert_eq!(parse(&text), Ok(plain.clone()), "rendered as {:?}", text);
                }
            }
        }

        #[test]
        fn rendered_filters_round_trip(
            specs in prop::collection::vec(
                ("[a-z_][a-z0-9_ ]{0,8}", 0..Op::ALL.len(), any::<bool>(), any::<String>(),
                 prop::collection::vec(any::<String>(), 0..5)),
                0..5,
            )
        ) {
            let lengths: Vec<usize> =
                specs.iter().map(|(_, op, _, _, list)| if Op::ALL[*op] == Op::In { list.len() } else { 1 }).collect();
            let filters: Vec<Filter> = specs
                .into_iter()
                .map(|(column, op, negate, value, list)| {
                    let op = Op::ALL[op];
                    let value = if op == Op::In {
                        format!("{{{}}}", list.iter().map(|v| quote(v)).collect::<Vec<_>>().join(","))
                    } else {
                        value
                    };
                    Filter { column, op, value, negate }
                })
                .collect();
            let parsed = parse(&render(&filters));
            prop_assert_eq!(&parsed, &Ok(filters.clone()));
            prop_assert_eq!(filters.iter().map(Filter::in_len).collect::<Vec<_>>(), lengths);
        }
    }
}
