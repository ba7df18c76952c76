//! `postgres_changes` filters as Supabase Realtime reads them: `col=op.value`,
//! several joined by commas (AND), `in.(a,b,...)`, PostgREST-style double
//! quotes. Values stay text here; Postgres compares them as the column's type.

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
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
        }
    }

    /// The SQL operator; the only operator text that ever reaches SQL.
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq | Op::In => "=",
            Op::Neq => "<>",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
        }
    }
}

pub const MAX_IN_VALUES: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    pub column: String,
    pub op: Op,
    /// For `in`, the values; otherwise exactly one.
    pub values: Vec<String>,
}

impl fmt::Display for Filter {
    /// As Supabase lists filters in its error messages: `{"id", "eq", "5"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.op == Op::In { format!("{{{}}}", self.values.join(",")) } else { self.values[0].clone() };
        write!(f, "{{{:?}, {:?}, {:?}}}", self.column, self.op.name(), value)
    }
}

/// Parses a binding's `filter`. An empty or blank filter means none.
pub fn parse(filter: &str) -> Result<Vec<Filter>, String> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(filter, ',')
        .into_iter()
        .map(|part| parse_one(part.trim()).ok_or_else(|| parse_error(part.trim())))
        .collect()
}

/// `Error parsing `filter` params: ["col", "op.value"]`, as Supabase words it.
fn parse_error(part: &str) -> String {
    let pieces: Vec<String> = part.splitn(2, '=').map(|p| format!("{p:?}")).collect();
    format!("Error parsing `filter` params: [{}]", pieces.join(", "))
}

fn parse_one(part: &str) -> Option<Filter> {
    let (column, rest) = part.split_once('=')?;
    let (op, value) = rest.split_once('.')?;
    let column = unquote(column.trim());
    if column.is_empty() {
        return None;
    }
    let op = Op::parse(op)?;
    let values = if op == Op::In {
        let inner = value.strip_prefix('(')?.strip_suffix(')')?;
        let values: Vec<String> = split_top_level(inner, ',').into_iter().map(|v| unquote(v.trim())).collect();
        if values.iter().any(String::is_empty) {
            return None;
        }
        values
    } else {
        vec![unquote(value)]
    };
    Some(Filter { column, op, values })
}

/// Splits at `sep` outside parentheses and double quotes.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `"a\"b"` → `a"b`; unquoted text is kept as it is.
fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return s.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(column: &str, op: Op, values: &[&str]) -> Filter {
        Filter { column: column.into(), op, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn single_filters() {
        assert_eq!(parse("id=eq.5"), Ok(vec![f("id", Op::Eq, &["5"])]));
        assert_eq!(parse("name=neq.a.b"), Ok(vec![f("name", Op::Neq, &["a.b"])]), "the first dot ends the operator");
        for (text, op) in [("lt", Op::Lt), ("lte", Op::Lte), ("gt", Op::Gt), ("gte", Op::Gte)] {
            assert_eq!(parse(&format!("n={text}.1")), Ok(vec![f("n", op, &["1"])]));
        }
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("   "), Ok(vec![]));
    }

    #[test]
    fn in_lists_and_quotes() {
        assert_eq!(parse("id=in.(1,2,3)"), Ok(vec![f("id", Op::In, &["1", "2", "3"])]));
        assert_eq!(parse(r#"name=in.("a,b","c\"d")"#), Ok(vec![f("name", Op::In, &["a,b", "c\"d"])]));
        assert_eq!(parse(r#"name=eq."x,y""#), Ok(vec![f("name", Op::Eq, &["x,y"])]));
        assert!(parse("id=in.1,2").is_err());
        assert!(parse("id=in.(1,,2)").is_err());
    }

    #[test]
    fn commas_join_filters_with_and() {
        assert_eq!(parse("a=eq.1,b=in.(2,3)"), Ok(vec![f("a", Op::Eq, &["1"]), f("b", Op::In, &["2", "3"])]));
    }

    #[test]
    fn errors_read_like_supabase() {
        assert_eq!(parse("wrong"), Err(r#"Error parsing `filter` params: ["wrong"]"#.into()));
        assert_eq!(parse("foo=hey"), Err(r#"Error parsing `filter` params: ["foo", "hey"]"#.into()));
        assert_eq!(parse("id=like.5"), Err(r#"Error parsing `filter` params: ["id", "like.5"]"#.into()));
        assert!(parse("=eq.5").is_err());
    }

    #[test]
    fn display_matches_supabase_messages() {
        assert_eq!(f("id", Op::Eq, &["5"]).to_string(), r#"{"id", "eq", "5"}"#);
        assert_eq!(f("id", Op::In, &["1", "2"]).to_string(), r#"{"id", "in", "{1,2}"}"#);
    }
}
