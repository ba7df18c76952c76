//! The SQL a filter puts on a value, as Supabase's `check_equality_op`
//! evaluates it: the filter's value is bound as text and cast to the
//! column's type; `not.` negates (a NULL comparison stays NULL: not visible),
//! but for `is` and `isdistinct`, which negate in the operator. Only fixed
//! keywords and the caller's own SQL are spliced, never a client's text.

use super::filter::{Filter, Op};

/// The values `is` takes, and their SQL.
const IS_VALUES: [(&str, &str); 4] = [("null", "NULL"), ("true", "TRUE"), ("false", "FALSE"), ("unknown", "UNKNOWN")];

/// Is `value` one `is` takes?
pub fn is_value(value: &str) -> bool {
    IS_VALUES.iter().any(|(v, _)| *v == value)
}

/// The condition on `value_sql` (of type `type_sql`, from `format_type`),
/// with the filter's value bound as `$param`; and the text to bind, or None
/// when the condition binds nothing (`is`).
pub fn condition(f: &Filter, value_sql: &str, type_sql: &str, param: usize) -> (String, Option<String>) {
    let bound = || Some(f.value.clone());
    let (sql, value) = match f.op {
        Op::Is => {
            let keyword = IS_VALUES.iter().find(|(v, _)| *v == f.value).map(|(_, k)| *k);
            let not = if f.negate { " NOT" } else { "" };
            // Checked at subscribe; a value that is not one of them matches nothing.
            let sql = keyword.map_or_else(|| "false".to_owned(), |k| format!("{value_sql} IS{not} {k}"));
            return (sql, None);
        }
        Op::IsDistinct => {
            let not = if f.negate { " NOT" } else { "" };
            return (format!("{value_sql} IS{not} DISTINCT FROM ${param}::{type_sql}"), bound());
        }
        Op::In => (format!("{value_sql} = ANY(${param}::{type_sql}[])"), bound()),
        op => {
            let symbol = match op {
                Op::Eq => "=",
                Op::Neq => "<>",
                Op::Lt => "<",
                Op::Lte => "<=",
                Op::Gt => ">",
                Op::Gte => ">=",
                Op::Like => "LIKE",
                Op::Ilike => "ILIKE",
                Op::Match => "~",
                Op::Imatch => "~*",
                Op::In | Op::Is | Op::IsDistinct => unreachable!("handled above"),
            };
            (format!("{value_sql} {symbol} ${param}::{type_sql}"), bound())
        }
    };
    if f.negate { (format!("NOT ({sql})"), value) } else { (sql, value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(op: Op, value: &str, negate: bool) -> Filter {
        Filter { column: "c".into(), op, value: value.into(), negate }
    }

    #[test]
    fn values_are_bound_and_cast_to_the_column_type() {
        assert_eq!(
            condition(&filter(Op::Eq, "5", false), "v.v", "bigint", 2),
            ("v.v = $2::bigint".into(), Some("5".into()))
        );
        assert_eq!(
            condition(&filter(Op::In, "{a,\"b,c\"}", false), "v.v", "text", 2),
            ("v.v = ANY($2::text[])".into(), Some("{a,\"b,c\"}".into()))
        );
        assert_eq!(condition(&filter(Op::Imatch, "^a", false), "x", "text", 1).0, "x ~* $1::text");
        assert_eq!(condition(&filter(Op::Neq, "'; drop table t; --", false), "x", "text", 1).0, "x <> $1::text");
    }

    #[test]
    fn negation_wraps_but_is_and_isdistinct_negate_in_the_operator() {
        assert_eq!(condition(&filter(Op::Like, "a%", true), "x", "text", 1).0, "NOT (x LIKE $1::text)");
        assert_eq!(condition(&filter(Op::Is, "null", true), "x", "text", 1), ("x IS NOT NULL".into(), None));
        assert_eq!(condition(&filter(Op::Is, "true", false), "x", "boolean", 1), ("x IS TRUE".into(), None));
        assert_eq!(condition(&filter(Op::IsDistinct, "1", true), "x", "int", 1).0, "x IS NOT DISTINCT FROM $1::int");
        assert_eq!(condition(&filter(Op::IsDistinct, "1", false), "x", "int", 1).0, "x IS DISTINCT FROM $1::int");
    }

    #[test]
    fn is_takes_only_its_four_values() {
        assert!(["null", "true", "false", "unknown"].iter().all(|v| is_value(v)));
        assert!(!is_value("NULL") && !is_value("1) OR (true"));
        assert_eq!(condition(&filter(Op::Is, "1) OR (true", false), "x", "boolean", 1), ("false".into(), None));
    }
}
