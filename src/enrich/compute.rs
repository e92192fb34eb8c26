//! `kind = "compute"`: a field from an expression over the row's columns, e.g.
//! `expr = "first_name + \" \" + last_name"`, `expr = "amount * 1.19"`,
//! `expr = "format_date(created_at, \"%Y-%m\")"`.
//!
//! Expressions are evalexpr's language (arithmetic, comparisons, `if(c, a, b)`, string
//! concatenation with `+`, math and `str::` functions) evaluated against a read-only
//! context: no assignment, no I/O, nothing outside the row. Columns are variables by
//! name; integers stay integers, DECIMAL/NUMERIC become floats, dates and times their
//! ISO text, NULL the empty value. `format_date(value, pattern)` formats an ISO date or
//! timestamp with `%Y %m %d %H %M %S`.

use evalexpr::{
    error::EvalexprResultValue, Context, DefaultNumericTypes, EvalexprError, EvalexprResult, Node,
    Value as Ev,
};
use serde::Deserialize;

use super::config::{Kind, Tables};
use super::{Binding, Enricher, EventMeta, Layout};
use crate::event::{Row, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    /// The field it adds.
    pub field: String,
    pub expr: String,
    /// keyword (default), text, long, double, boolean or date.
    #[serde(default = "default_type", rename = "type")]
    pub ty: String,
}

fn default_type() -> String {
    "keyword".into()
}

const TYPES: &[&str] = &["keyword", "text", "long", "double", "boolean", "date"];

pub struct Compute {
    cfg: ComputeConfig,
    node: Node<DefaultNumericTypes>,
    /// The columns the expression reads, in `Binding::at` order.
    reads: Vec<String>,
}

impl Compute {
    pub fn new(c: &ComputeConfig) -> Result<Compute, String> {
        if !TYPES.contains(&c.ty.as_str()) {
            return Err(format!(
                "type `{}` is not one of: {}",
                c.ty,
                TYPES.join(", ")
            ));
        }
        let node = evalexpr::build_operator_tree::<DefaultNumericTypes>(&c.expr)
            .map_err(|e| format!("expression `{}`: {e}", c.expr))?;
        let mut reads: Vec<String> = node
            .iter_variable_identifiers()
            .map(str::to_string)
            .collect();
        reads.sort();
        reads.dedup();
        Ok(Compute {
            cfg: c.clone(),
            node,
            reads,
        })
    }
}

impl Enricher for Compute {
    fn append_only(&self) -> bool {
        true
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let at = self
            .reads
            .iter()
            .map(|n| input.require(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut layout = input.clone();
        layout.add(&self.cfg.field, &self.cfg.ty)?;
        Ok(Binding { at, layout })
    }

    fn apply(
        &mut self,
        b: &Binding,
        _meta: &EventMeta<'_>,
        row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        if b.at.iter().any(|&i| matches!(row[i], Value::Absent)) {
            // A key-only image: the inputs are not known here.
            row.push(Value::Absent);
            return Ok(());
        }
        let ctx = RowContext {
            names: &self.reads,
            values: b.at.iter().map(|&i| to_ev(&row[i])).collect(),
        };
        let out = self
            .node
            .eval_with_context(&ctx)
            .map_err(|e| format!("`{}`: {e}", self.cfg.expr))?;
        row.push(from_ev(out, &self.cfg.ty).map_err(|m| format!("`{}`: {m}", self.cfg.expr))?);
        Ok(())
    }
}

/// An event value as an expression value.
fn to_ev(v: &Value) -> Ev {
    match v {
        Value::Null | Value::Absent => Ev::Empty,
        Value::Bool(b) => Ev::Boolean(*b),
        Value::Int(i) => Ev::Int(*i),
        Value::UInt(u) => i64::try_from(*u).map_or(Ev::Float(*u as f64), Ev::Int),
        Value::Float(f) => Ev::Float(*f as f64),
        Value::Double(d) => Ev::Float(*d),
        Value::Decimal(s) => s.parse().map_or_else(|_| Ev::String(s.clone()), Ev::Float),
        Value::String(s) => Ev::String(s.clone()),
        // Dates, times, bytes, JSON and arrays: their text.
        other => Ev::String(other.to_text()),
    }
}

/// The expression's result as the declared field type.
fn from_ev(v: Ev, ty: &str) -> Result<Value, String> {
    Ok(match (ty, v) {
        (_, Ev::Empty) => Value::Null,
        ("long", Ev::Int(i)) => Value::Int(i),
        ("long", Ev::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
        ("double", Ev::Int(i)) => Value::Double(i as f64),
        ("double", Ev::Float(f)) if f.is_finite() => Value::Double(f),
        ("boolean", Ev::Boolean(b)) => Value::Bool(b),
        ("keyword" | "text" | "date", Ev::String(s)) => Value::String(s),
        ("keyword" | "text", Ev::Int(i)) => Value::String(i.to_string()),
        ("keyword" | "text", Ev::Float(f)) => Value::String(f.to_string()),
        ("keyword" | "text", Ev::Boolean(b)) => Value::String(b.to_string()),
        (ty, v) => return Err(format!("gave {v} where the field is {ty}")),
    })
}

/// The row as the expression's read-only context, with `format_date`.
struct RowContext<'a> {
    names: &'a [String],
    values: Vec<Ev>,
}

impl Context for RowContext<'_> {
    type NumericTypes = DefaultNumericTypes;

    fn get_value(&self, identifier: &str) -> Option<&Ev> {
        let i = self.names.iter().position(|n| n == identifier)?;
        self.values.get(i)
    }

    fn call_function(&self, identifier: &str, argument: &Ev) -> EvalexprResultValue {
        match identifier {
            "format_date" => {
                let args = argument.as_fixed_len_tuple(2)?;
                let (Ev::String(date), Ev::String(pattern)) = (&args[0], &args[1]) else {
                    return Err(EvalexprError::CustomMessage(
                        "format_date(value, \"%Y-%m-%d\") takes a date and a pattern".into(),
                    ));
                };
                format_date(date, pattern).map(Ev::String)
            }
            _ => Err(EvalexprError::FunctionIdentifierNotFound(
                identifier.to_string(),
            )),
        }
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, _disabled: bool) -> EvalexprResult<()> {
        Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
    }
}

/// `YYYY-MM-DD[THH:MM:SS...]` formatted with `%Y %m %d %H %M %S`.
fn format_date(date: &str, pattern: &str) -> EvalexprResult<String> {
    let part = |from: usize, len: usize| {
        date.get(from..from + len)
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let bad = || EvalexprError::CustomMessage(format!("`{date}` is not an ISO date"));
    let (y, m, d) = (
        part(0, 4).ok_or_else(bad)?,
        part(5, 2).ok_or_else(bad)?,
        part(8, 2).ok_or_else(bad)?,
    );
    let (hh, mm, ss) = (
        part(11, 2).unwrap_or("00"),
        part(14, 2).unwrap_or("00"),
        part(17, 2).unwrap_or("00"),
    );
    Ok(pattern
        .replace("%Y", y)
        .replace("%m", m)
        .replace("%d", d)
        .replace("%H", hh)
        .replace("%M", mm)
        .replace("%S", ss))
}

impl Kind for ComputeConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Compute::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expr: &str, ty: &str, columns: &[(&str, Value)]) -> Result<Value, String> {
        let c = ComputeConfig {
            kind: "compute".into(),
            table: Tables::One("db.t".into()),
            field: "out".into(),
            expr: expr.into(),
            ty: ty.into(),
        };
        let mut step = Compute::new(&c)?;
        let layout = Layout {
            columns: columns
                .iter()
                .map(|(n, _)| crate::event::Column {
                    name: n.to_string(),
                    type_name: "x".into(),
                })
                .collect(),
            key: vec![],
        };
        let b = step.bind(&layout)?;
        let mut row: Row = columns.iter().map(|c| c.1.clone()).collect();
        let e = crate::enrich::test_event();
        step.apply(
            &b,
            &EventMeta {
                event: &e,
                after: true,
            },
            &mut row,
            &mut Vec::new(),
        )?;
        Ok(row.pop().unwrap())
    }

    #[test]
    fn expressions_over_columns() {
        let s = |v: &str| Value::String(v.into());
        assert_eq!(
            run(
                "first + \" \" + last",
                "keyword",
                &[("first", s("Ada")), ("last", s("Lovelace"))]
            ),
            Ok(s("Ada Lovelace"))
        );
        assert_eq!(
            run(
                "qty * price",
                "double",
                &[
                    ("qty", Value::Int(3)),
                    ("price", Value::Decimal("2.5".into()))
                ]
            ),
            Ok(Value::Double(7.5))
        );
        assert_eq!(
            run("qty + 1", "long", &[("qty", Value::UInt(41))]),
            Ok(Value::Int(42))
        );
        let at = Value::DateTime {
            year: 2024,
            month: 3,
            day: 9,
            hour: 7,
            minute: 5,
            second: 0,
            micros: 0,
            fsp: 0,
            utc: false,
        };
        assert_eq!(
            run("format_date(at, \"%Y-%m\")", "keyword", &[("at", at)]),
            Ok(s("2024-03"))
        );
        assert_eq!(
            run(
                "if(n > 10, \"big\", \"small\")",
                "keyword",
                &[("n", Value::Int(11))]
            ),
            Ok(s("big"))
        );
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let e = run(
            "a / b",
            "long",
            &[("a", Value::Int(1)), ("b", Value::Int(0))],
        )
        .unwrap_err();
        assert!(e.contains("a / b"), "{e}");
        let e = run("a +", "long", &[("a", Value::Int(1))]).unwrap_err();
        assert!(e.contains("`a +`"), "{e}");
        let e = run("nope + 1", "long", &[("a", Value::Int(1))]).unwrap_err();
        assert!(e.contains("no column `nope`"), "{e}");
        let e = run("a", "boolean", &[("a", Value::Int(1))]).unwrap_err();
        assert!(e.contains("boolean"), "{e}");
    }
}
