//! `scaling_modifiers`: KEDA's formula over named triggers (`../shared/spec/keda.md`
//! §2.11), in the language KEDA compiles it with, expr-lang/expr, through the expr-lang
//! crate. Evaluating is pure: no I/O, no clock.

use std::sync::Arc;

/// A compiled formula; equal when the text is.
#[derive(Clone)]
pub struct Formula {
    source: String,
    program: Arc<expr::Program>,
}

impl PartialEq for Formula {
    fn eq(&self, other: &Formula) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for Formula {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a formula does not compile or does not give a number.
#[derive(Debug, thiserror::Error)]
pub enum FormulaError {
    /// Not a source: the message says it all on one line (see [`describe`]).
    #[error("{}", describe(.0))]
    Expr(expr::Error),
    #[error("gives {0}, not a number")]
    NotANumber(String),
}

impl From<expr::Error> for FormulaError {
    fn from(e: expr::Error) -> FormulaError {
        FormulaError::Expr(e)
    }
}

/// The error on one line: a syntax error's multi-line snippet (` --> 1:23`, the source,
/// a caret, `= expected expr`) becomes `expected expr at 1:23` (the caller names the
/// formula).
fn describe(e: &expr::Error) -> String {
    let text = e.to_string();
    let at = text.lines().find_map(|l| l.trim().strip_prefix("--> "));
    let what = text.lines().find_map(|l| l.trim().strip_prefix("= "));
    match (at, what) {
        (Some(at), Some(what)) => format!("{what} at {at}"),
        _ => text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "),
    }
}

impl Formula {
    /// Compiles `source` and runs it once with `-1.0` for every name, as KEDA's
    /// validation does: a syntax error, a name that is no trigger's, or a result that is
    /// not a number is an error here, not at the first poll.
    pub fn compile<'a>(
        source: &str,
        names: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Formula, FormulaError> {
        let program = expr::compile(source)?;
        let formula = Formula { source: source.to_owned(), program: Arc::new(program) };
        formula.eval(names.into_iter().map(|n| (n, -1.0)))?;
        Ok(formula)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The formula's value with each trigger name bound to its metric.
    pub fn eval<'a>(&self, vars: impl IntoIterator<Item = (&'a str, f64)>) -> Result<f64, FormulaError> {
        let mut ctx = expr::Context::default();
        for (name, value) in vars {
            ctx.insert(name.to_owned(), value);
        }
        // KEDA wraps the formula in float(...): integers are numbers too.
        match expr::run(&self.program, &ctx)? {
            expr::Value::Float(v) => Ok(v),
            expr::Value::Integer(v) => Ok(v as f64),
            other => Err(FormulaError::NotANumber(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What KEDA users write: arithmetic, comparisons, the ternary, min/max/abs/ceil/
    /// floor, `??`, count over a list.
    #[test]
    fn what_keda_users_write() {
        let names = ["q1", "q2"];
        let eval =
            |f: &str, q1: f64, q2: f64| Formula::compile(f, names).unwrap().eval([("q1", q1), ("q2", q2)]).unwrap();
        assert_eq!(eval("q1 + q2", 3.0, 2.0), 5.0);
        assert_eq!(eval("q1 > 2 ? q1 : 0", 3.0, 0.0), 3.0);
        assert_eq!(eval("q1 > 2 ? q1 : 0", 1.0, 0.0), 0.0);
        assert_eq!(eval("max(q1, q2) - min(q1, q2)", 3.0, 7.0), 4.0);
        assert_eq!(eval("abs(q1 - q2) + ceil(q1 / 2) + floor(q2 / 2)", 3.0, 7.0), 4.0 + 2.0 + 3.0);
        assert_eq!(eval("(q1 + q2) / 2", 3.0, 4.0), 3.5);
        assert_eq!(eval("count([q1, q2], # > 2)", 3.0, 1.0), 1.0);
        assert_eq!(eval("q1 == 3 && q2 < 1 ? 10 : 20", 3.0, 0.0), 10.0);
    }

    /// KEDA's validation: unknown names, syntax errors, non-numbers fail at load.
    #[test]
    fn bad_formulas_fail_to_compile() {
        let err = |f: &str| Formula::compile(f, ["q1"]).unwrap_err().to_string();
        assert!(err("q1 + q3").contains("unknown variable: q3"), "{}", err("q1 + q3"));
        assert_eq!(err("q1 > 1 ? q1 :"), "expected expr at 1:14");
        assert_eq!(err("q1 > 1"), "gives false, not a number");
        assert!(Formula::compile("q1 * 2", ["q1"]).is_ok());
    }
}
