//! The `filter` query parameter of Compute Engine `list` methods: parsing and evaluation against a
//! resource's JSON (as the API returns it).
//!
//! Two syntaxes are accepted; one filter may not mix them (see docs/compute-api.md §9):
//!
//! * **AIP-160 comparisons** — `field op value` with `op` one of `=`, `!=`, `<`, `<=`, `>`, `>=`,
//!   `:`. Grammar (AIP-160 precedence: negation binds tightest, then `OR`, then `AND`):
//!
//!   ```text
//!   filter      := [expression]
//!   expression  := factor { ["AND"] factor }        juxtaposition is an implicit AND
//!   factor      := term { "OR" term }
//!   term        := "NOT" term | "-" term | "(" expression ")" | restriction
//!   restriction := field op value
//!   field       := name { "." name }                 name: [A-Za-z_][A-Za-z0-9_-]*
//!   value       := "double quoted" | 'single quoted' | bare
//!   ```
//!
//!   so `a AND b OR c` is `a AND (b OR c)` and `NOT a OR b` is `(NOT a) OR b`. A bare value runs
//!   until whitespace or an unbalanced `)` (URLs need no quotes); `\` escapes the next character in
//!   bare and quoted values. Semantics: `=` compares exactly, numerically when both sides parse as
//!   numbers (Compute sends uint64 as JSON strings), as booleans for `true`/`false`; an unescaped
//!   `*` makes the value a glob. `!=` is the negation of `=`. `<`… compare numbers numerically and
//!   strings lexicographically. `:` is "has": `field:*` tests presence, a string field matches a
//!   substring (case-sensitive, `*` allowed), an object field matches a key, other scalars as `=`.
//!   An array field matches when any element does; paths descend through arrays of objects.
//!   A missing (or `null`) field makes `=`, `:`, `<`… false and `!=` true.
//!
//! * **Regular expressions** — `field eq literal` / `field ne literal`, several as
//!   `(f1 eq lit) (f2 ne "lit")` (AND). The literal (bare, `'single'` or `"double"` quoted) is an
//!   RE2 expression that must match the *whole* value; numbers and booleans are matched against
//!   their JSON text. `ne` is the negation of `eq`. `OR`, `NOT` and `-` are rejected in this syntax.
//!
//! Regular expressions are compiled once by [`Filter::parse`]; [`Filter::matches`] does not allocate
//! (except to print a number longer than 48 characters for `eq`/glob matching, which JSON from
//! Compute never contains).

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use regex::Regex;
use serde_json::Value;

/// Longest accepted filter text, in characters.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses and negations (`NOT`, `-`).
pub const MAX_DEPTH: usize = 32;

/// What the parser expects at the start of a term (used in error messages).
const EXPECT_TERM: &str = "a field name, '(', NOT or '-'";
/// Characters that make up the symbolic comparison operators.
const OPERATOR_CHARS: &str = "=!<>~";

/// Why a filter text was rejected; positions are 0-based character offsets into the filter text.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    /// The filter text is longer than [`MAX_FILTER_LEN`] characters.
    #[error("filter is {length} characters long; at most {max} are allowed")]
    TooLong {
        /// Length of the rejected text, in characters.
        length: usize,
        /// The limit, [`MAX_FILTER_LEN`].
        max: usize,
    },
    /// Parentheses or negations nest deeper than [`MAX_DEPTH`] levels.
    #[error("filter nests deeper than {max} levels at position {position}")]
    TooDeep {
        /// Where the level beyond the limit starts.
        position: usize,
        /// The limit, [`MAX_DEPTH`].
        max: usize,
    },
    /// A token appeared where the grammar does not allow it.
    #[error("unexpected {found} at position {position}; expected {expected}")]
    Unexpected {
        /// The offending token, quoted, or `end of filter`.
        found: String,
        /// Where it starts.
        position: usize,
        /// What would have been accepted there.
        expected: &'static str,
    },
    /// A `)` has no matching `(`.
    #[error("unexpected ')' at position {position}: no matching '('")]
    UnmatchedCloseParen {
        /// Where the `)` is.
        position: usize,
    },
    /// A `(` is never closed.
    #[error("unbalanced parentheses: '(' at position {position} is never closed")]
    UnclosedParen {
        /// Where the `(` is.
        position: usize,
    },
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string starting at position {position}")]
    UnterminatedString {
        /// Where the opening quote is.
        position: usize,
    },
    /// A field name is malformed (an empty segment between dots).
    #[error("invalid field name '{field}' at position {position}")]
    InvalidField {
        /// The field name as written.
        field: String,
        /// Where it starts.
        position: usize,
    },
    /// A field is not followed by a comparison operator.
    #[error(
        "expected a comparison operator (=, !=, <, <=, >, >=, :, eq, ne) after field '{field}' at position {position}, found {found}"
    )]
    MissingOperator {
        /// The field name.
        field: String,
        /// Where the operator was expected.
        position: usize,
        /// What was found instead, quoted, or `end of filter`.
        found: String,
    },
    /// An operator-like token is not one of the supported operators.
    #[error(
        "unknown operator '{operator}' at position {position}; supported: =, !=, <, <=, >, >=, :, eq, ne"
    )]
    UnknownOperator {
        /// The token as written.
        operator: String,
        /// Where it starts.
        position: usize,
    },
    /// An operator is not followed by a value.
    #[error("missing value after '{field} {operator}' at position {position}")]
    MissingValue {
        /// The field name.
        field: String,
        /// The operator.
        operator: &'static str,
        /// Where the value was expected.
        position: usize,
    },
    /// `AND`, `OR` or `NOT` was written in lower or mixed case.
    #[error(
        "logical operator '{word}' at position {position} must be written in uppercase ({upper})"
    )]
    LowercaseKeyword {
        /// The word as written.
        word: String,
        /// The accepted spelling.
        upper: String,
        /// Where it starts.
        position: usize,
    },
    /// A regular-expression literal does not compile.
    #[error("invalid regular expression '{pattern}' for field {field}: {message}")]
    InvalidRegex {
        /// The field the expression applies to.
        field: String,
        /// The expression as written.
        pattern: String,
        /// The regex engine's explanation.
        message: String,
    },
    /// Both `eq`/`ne` and AIP-160 comparison operators appear in one filter.
    #[error(
        "cannot mix regular-expression (eq/ne) and comparison operators: '{regex_operator}' at position {regex_position}, '{comparison_operator}' at position {comparison_position}"
    )]
    MixedSyntax {
        /// The first regular-expression operator (`eq` or `ne`).
        regex_operator: &'static str,
        /// Where it is.
        regex_position: usize,
        /// The conflicting AIP-160 comparison operator.
        comparison_operator: &'static str,
        /// Where it is.
        comparison_position: usize,
    },
    /// `OR`, `NOT` or `-` was used in a regular-expression (eq/ne) filter.
    #[error(
        "'{keyword}' at position {position} is not supported in regular-expression (eq/ne) filters; write constraints as (field eq literal) (field ne literal), which are ANDed"
    )]
    RegexLogic {
        /// The keyword as written.
        keyword: &'static str,
        /// Where it is.
        position: usize,
    },
}

/// A parsed `filter` expression, ready to be evaluated against many resources.
#[derive(Debug, Clone)]
pub struct Filter {
    /// `None` for an empty filter, which matches everything.
    root: Option<Node>,
}

impl Filter {
    /// Parses a filter text; empty or whitespace-only text matches everything.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let length = text.chars().count();
        if length > MAX_FILTER_LEN {
            return Err(FilterError::TooLong {
                length,
                max: MAX_FILTER_LEN,
            });
        }
        let mut parser = Parser::new(text);
        parser.skip_ws();
        if parser.peek().is_none() {
            return Ok(Filter { root: None });
        }
        let root = parser.parse_expression()?;
        parser.skip_ws();
        match parser.peek() {
            None => Ok(Filter { root: Some(root) }),
            Some(')') => Err(FilterError::UnmatchedCloseParen {
                position: parser.pos,
            }),
            Some(c) => Err(FilterError::Unexpected {
                found: format!("'{c}'"),
                position: parser.pos,
                expected: "end of filter",
            }),
        }
    }

    /// Whether `resource` (a resource's JSON as the API returns it) satisfies the filter.
    pub fn matches(&self, resource: &Value) -> bool {
        match &self.root {
            None => true,
            Some(node) => node.eval(resource),
        }
    }

    /// Whether the filter was empty, so that every resource matches.
    pub fn is_match_all(&self) -> bool {
        self.root.is_none()
    }

    /// The top-level fields the filter reads (so a caller can build only those).
    pub fn top_level_fields(&self) -> Vec<String> {
        fn walk(node: &Node, out: &mut Vec<String>) {
            match node {
                Node::And(items) | Node::Or(items) => items.iter().for_each(|n| walk(n, out)),
                Node::Not(inner) => walk(inner, out),
                Node::Cmp(cmp) => {
                    if let Some(first) = cmp.path.first()
                        && !out.iter().any(|f| f.as_str() == &**first)
                    {
                        out.push(first.to_string());
                    }
                }
            }
        }
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            walk(root, &mut out);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and evaluation
// ---------------------------------------------------------------------------------------------

/// A node of the parsed filter.
#[derive(Debug, Clone)]
enum Node {
    /// All children hold.
    And(Vec<Node>),
    /// At least one child holds.
    Or(Vec<Node>),
    /// The child does not hold.
    Not(Box<Node>),
    /// A single `field op value` restriction.
    Cmp(Comparison),
}

impl Node {
    /// Evaluates the node against a resource.
    fn eval(&self, resource: &Value) -> bool {
        match self {
            Node::And(items) => items.iter().all(|n| n.eval(resource)),
            Node::Or(items) => items.iter().any(|n| n.eval(resource)),
            Node::Not(inner) => !inner.eval(resource),
            Node::Cmp(cmp) => cmp.eval(resource),
        }
    }
}

/// One restriction: a field path, a test on its value(s), and whether the result is negated.
#[derive(Debug, Clone)]
struct Comparison {
    /// Field path split at dots.
    path: Vec<Box<str>>,
    /// The test applied to each value found at the path.
    test: Test,
    /// `!=` and `ne`: the negation of `=` / `eq` over the whole field.
    negate: bool,
}

/// The test a restriction applies to a leaf value.
#[derive(Debug, Clone)]
enum Test {
    /// `field:*`.
    Present,
    /// `field:value`.
    Has(Operand),
    /// `field = value` (and `!=`, negated).
    Equal(Operand),
    /// `<`, `<=`, `>`, `>=`.
    Order(OrderOp, Operand),
    /// `field eq regex` (and `ne`, negated); anchored at both ends.
    Regex(Regex),
}

/// An ordering comparison operator.
#[derive(Debug, Clone, Copy)]
enum OrderOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl OrderOp {
    /// Whether `ordering` (field compared to value) satisfies the operator.
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            OrderOp::Lt => ordering == Ordering::Less,
            OrderOp::Le => ordering != Ordering::Greater,
            OrderOp::Gt => ordering == Ordering::Greater,
            OrderOp::Ge => ordering != Ordering::Less,
        }
    }
}

/// The right-hand side of an AIP-160 comparison, pre-digested at parse time.
#[derive(Debug, Clone)]
struct Operand {
    /// The decoded value (escapes removed, `*` kept).
    text: Box<str>,
    /// `text` split at unescaped `*`; a single part means no wildcard.
    parts: Vec<Box<str>>,
    /// The value as a number, when it is one and has no wildcard.
    number: Option<Num>,
    /// The value as a boolean, when it is `true` or `false` (any case).
    boolean: Option<bool>,
}

impl Operand {
    /// Whether the value contains an unescaped `*`.
    fn is_glob(&self) -> bool {
        self.parts.len() > 1
    }

    /// `=` on one scalar.
    fn equals(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => {
                if self.is_glob() {
                    glob_full(&self.parts, s)
                } else if let (Some(want), Some(have)) = (self.number, parse_num(s)) {
                    num_cmp(have, want) == Some(Ordering::Equal)
                } else {
                    s.as_str() == &*self.text
                }
            }
            Value::Number(n) => {
                if let Some(want) = self.number {
                    num_cmp(json_num(n), want) == Some(Ordering::Equal)
                } else {
                    self.is_glob() && number_text(n, |s| glob_full(&self.parts, s))
                }
            }
            Value::Bool(b) => match self.boolean {
                Some(want) => *b == want,
                None => self.is_glob() && glob_full(&self.parts, bool_text(*b)),
            },
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }

    /// `:` on one scalar or object.
    fn has(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => glob_within(&self.parts, s),
            Value::Object(map) => !self.is_glob() && map.contains_key(&*self.text),
            _ => self.equals(value),
        }
    }

    /// Orders one scalar against the value; `None` when they are not comparable.
    fn order(&self, value: &Value) -> Option<Ordering> {
        match value {
            Value::String(s) => match (parse_num(s), self.number) {
                (Some(have), Some(want)) => num_cmp(have, want),
                _ => Some(s.as_str().cmp(&*self.text)),
            },
            Value::Number(n) => self.number.and_then(|want| num_cmp(json_num(n), want)),
            Value::Bool(b) => self.boolean.map(|want| b.cmp(&want)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

impl Comparison {
    /// Evaluates the restriction against a resource.
    fn eval(&self, resource: &Value) -> bool {
        self.any_at(resource, &self.path) != self.negate
    }

    /// Whether any value at `path` below `value` passes the test (arrays are searched).
    fn any_at(&self, value: &Value, path: &[Box<str>]) -> bool {
        match path.split_first() {
            None => self.test_leaf(value),
            Some((segment, rest)) => match value {
                Value::Object(map) => map
                    .get(&**segment)
                    .is_some_and(|child| self.any_at(child, rest)),
                Value::Array(items) => items.iter().any(|item| self.any_at(item, path)),
                _ => false,
            },
        }
    }

    /// Applies the test to the value found at the end of the path.
    fn test_leaf(&self, value: &Value) -> bool {
        match (&self.test, value) {
            (_, Value::Null) => false,
            (Test::Present, _) => true,
            (_, Value::Array(items)) => items.iter().any(|item| self.test_leaf(item)),
            (Test::Has(operand), v) => operand.has(v),
            (Test::Equal(operand), v) => operand.equals(v),
            (Test::Order(op, operand), v) => operand.order(v).is_some_and(|o| op.accepts(o)),
            (Test::Regex(re), Value::String(s)) => re.is_match(s),
            (Test::Regex(re), Value::Number(n)) => number_text(n, |s| re.is_match(s)),
            (Test::Regex(re), Value::Bool(b)) => re.is_match(bool_text(*b)),
            (Test::Regex(_), Value::Object(_)) => false,
        }
    }
}

/// A number from the filter or the resource: exact for integers, `f64` otherwise.
#[derive(Debug, Clone, Copy)]
enum Num {
    /// An integer (covers the whole int64 and uint64 ranges exactly).
    Int(i128),
    /// Anything with a fraction or exponent, or an integer too large for `i128`.
    Float(f64),
}

impl Num {
    /// The number as `f64` (lossy for huge integers).
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Compares two numbers; `None` only for NaN.
fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        _ => a.as_f64().partial_cmp(&b.as_f64()),
    }
}

/// A JSON number as [`Num`].
fn json_num(n: &serde_json::Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        n.as_f64().map_or(Num::Float(f64::NAN), Num::Float)
    }
}

/// Parses a decimal number (`-12`, `3.5`, `1e3`); `None` for anything else (`inf`, `10.0.0.1`, ``).
fn parse_num(s: &str) -> Option<Num> {
    let bytes = s.as_bytes();
    let mut i = usize::from(matches!(bytes.first(), Some(b'-' | b'+')));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa_digits = digits(&mut i);
    let mut integral = true;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        integral = false;
        mantissa_digits += digits(&mut i);
    }
    if mantissa_digits == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        integral = false;
        if matches!(bytes.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    if integral && let Ok(v) = s.parse::<i128>() {
        return Some(Num::Int(v));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Num::Float)
}

/// The JSON text of a boolean.
fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Calls `f` with the JSON text of a number, printed into a stack buffer.
fn number_text<R>(n: &serde_json::Number, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = StackBuf {
        buf: [0; 48],
        len: 0,
    };
    if write!(buf, "{n}").is_ok()
        && let Some(s) = buf.as_str()
    {
        return f(s);
    }
    f(&n.to_string())
}

/// A fixed-size buffer for printing numbers without allocating.
struct StackBuf {
    /// The bytes written so far (UTF-8).
    buf: [u8; 48],
    /// How many bytes of `buf` are used.
    len: usize,
}

impl StackBuf {
    /// The text written so far.
    fn as_str(&self) -> Option<&str> {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
    }
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether `s` matches the glob whose literal pieces are `parts` (joined by `*`), as a whole.
fn glob_full(parts: &[Box<str>], s: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return s.is_empty();
    };
    let Some((last, middle)) = rest.split_last() else {
        return s == &**first;
    };
    let Some(mut mid) = s
        .strip_prefix(&**first)
        .and_then(|r| r.strip_suffix(&**last))
    else {
        return false;
    };
    for part in middle {
        match mid.find(&**part) {
            Some(i) => mid = mid.get(i + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

/// Whether some substring of `s` matches the glob whose literal pieces are `parts`.
fn glob_within(parts: &[Box<str>], s: &str) -> bool {
    let mut rest = s;
    for part in parts {
        match rest.find(&**part) {
            Some(i) => rest = rest.get(i + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// A comparison operator as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `:`
    Has,
    /// `eq`
    RegexEq,
    /// `ne`
    RegexNe,
}

impl Op {
    /// The operator as written.
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
            Op::RegexEq => "eq",
            Op::RegexNe => "ne",
        }
    }

    /// Whether this is a regular-expression operator.
    fn is_regex(self) -> bool {
        matches!(self, Op::RegexEq | Op::RegexNe)
    }
}

/// A value as scanned from the text.
struct RawValue {
    /// The decoded text (AIP-160: escapes removed; regex: verbatim).
    text: String,
    /// `text` split at unescaped `*` (AIP-160 only).
    parts: Vec<String>,
    /// Whether the value was quoted.
    quoted: bool,
}

impl RawValue {
    /// Appends a character that was not escaped.
    fn push(&mut self, c: char, regex: bool) {
        self.text.push(c);
        if c == '*' && !regex {
            self.parts.push(String::new());
        } else if let Some(last) = self.parts.last_mut() {
            last.push(c);
        }
    }

    /// Appends a character that was escaped with `\` (never a wildcard).
    fn push_escaped(&mut self, c: char) {
        self.text.push(c);
        if let Some(last) = self.parts.last_mut() {
            last.push(c);
        }
    }
}

/// Recursive-descent parser over the characters of the filter text.
struct Parser {
    /// The filter text.
    chars: Vec<char>,
    /// Index of the next character.
    pos: usize,
    /// Current nesting of parentheses and negations.
    depth: usize,
    /// First `eq`/`ne` seen, with its position.
    first_regex_op: Option<(&'static str, usize)>,
    /// First AIP-160 comparison operator seen, with its position.
    first_comparison_op: Option<(&'static str, usize)>,
    /// First `OR`, `NOT` or `-` seen, with its position.
    first_logic: Option<(&'static str, usize)>,
}

/// Whether `c` may start a field name.
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// Whether `c` may continue a field name (or a keyword).
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Describes a character (or the end) for error messages.
fn describe(c: Option<char>) -> String {
    match c {
        Some(c) => format!("'{c}'"),
        None => "end of filter".to_owned(),
    }
}

/// Keeps the last line of a regex error (the explanation), without the caret diagram.
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    match text
        .rfind("error: ")
        .and_then(|i| text.get(i + "error: ".len()..))
    {
        Some(tail) => tail.trim().to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Compiles a regex literal, anchored so that it must match the whole value.
fn compile_regex(field: &str, pattern: &str) -> Result<Regex, FilterError> {
    let err = |e: regex::Error| FilterError::InvalidRegex {
        field: field.to_owned(),
        pattern: pattern.to_owned(),
        message: regex_message(&e),
    };
    // Compiling the literal alone first makes error messages refer to the user's own text.
    Regex::new(pattern).map_err(err)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(err)
}

/// Collapses a one-element list into its element.
fn collapse(mut items: Vec<Node>, wrap: fn(Vec<Node>) -> Node) -> Node {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    wrap(items)
}

impl Parser {
    /// A parser at the start of `text`.
    fn new(text: &str) -> Self {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
            depth: 0,
            first_regex_op: None,
            first_comparison_op: None,
            first_logic: None,
        }
    }

    /// The next character.
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// The character at index `i`.
    fn peek_at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    /// Skips whitespace.
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// The text between two indices.
    fn slice(&self, start: usize, end: usize) -> String {
        self.chars
            .get(start..end)
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// Whether the keyword `kw` (ASCII) stands at the current position as a whole word.
    fn word_at(&self, kw: &str) -> bool {
        let mut i = self.pos;
        for k in kw.chars() {
            if self.peek_at(i) != Some(k) {
                return false;
            }
            i += 1;
        }
        !self.peek_at(i).is_some_and(is_ident_char)
    }

    /// Enters one level of nesting.
    fn enter(&mut self, position: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::TooDeep {
                position,
                max: MAX_DEPTH,
            });
        }
        Ok(())
    }

    /// Records an `OR`, `NOT` or `-`, which regular-expression filters do not allow.
    fn note_logic(&mut self, keyword: &'static str, position: usize) -> Result<(), FilterError> {
        if self.first_regex_op.is_some() {
            return Err(FilterError::RegexLogic { keyword, position });
        }
        self.first_logic.get_or_insert((keyword, position));
        Ok(())
    }

    /// Records an operator, rejecting a mix of the two syntaxes.
    fn note_op(&mut self, op: Op, position: usize) -> Result<(), FilterError> {
        if op.is_regex() {
            if let Some((keyword, at)) = self.first_logic {
                return Err(FilterError::RegexLogic {
                    keyword,
                    position: at,
                });
            }
            if let Some((comparison_operator, comparison_position)) = self.first_comparison_op {
                return Err(FilterError::MixedSyntax {
                    regex_operator: op.as_str(),
                    regex_position: position,
                    comparison_operator,
                    comparison_position,
                });
            }
            self.first_regex_op.get_or_insert((op.as_str(), position));
        } else {
            if let Some((regex_operator, regex_position)) = self.first_regex_op {
                return Err(FilterError::MixedSyntax {
                    regex_operator,
                    regex_position,
                    comparison_operator: op.as_str(),
                    comparison_position: position,
                });
            }
            self.first_comparison_op
                .get_or_insert((op.as_str(), position));
        }
        Ok(())
    }

    /// `expression := factor { ["AND"] factor }`; stops before `)` or at the end.
    fn parse_expression(&mut self) -> Result<Node, FilterError> {
        let mut items = vec![self.parse_factor()?];
        loop {
            self.skip_ws();
            if matches!(self.peek(), None | Some(')')) {
                break;
            }
            if self.word_at("AND") {
                self.pos += "AND".len();
            }
            items.push(self.parse_factor()?);
        }
        Ok(collapse(items, Node::And))
    }

    /// `factor := term { "OR" term }`.
    fn parse_factor(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.parse_term()?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if !self.word_at("OR") {
                self.pos = save;
                break;
            }
            self.note_logic("OR", self.pos)?;
            self.pos += "OR".len();
            terms.push(self.parse_term()?);
        }
        Ok(collapse(terms, Node::Or))
    }

    /// `term := "NOT" term | "-" term | "(" expression ")" | restriction`.
    fn parse_term(&mut self) -> Result<Node, FilterError> {
        self.skip_ws();
        let start = self.pos;
        let negation = if self.word_at("NOT") {
            Some("NOT")
        } else if self.peek() == Some('-') {
            Some("-")
        } else {
            None
        };
        if let Some(keyword) = negation {
            self.note_logic(keyword, start)?;
            self.pos += keyword.len();
            self.enter(start)?;
            let inner = self.parse_term()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if self.peek() == Some('(') {
            self.pos += 1;
            self.enter(start)?;
            self.skip_ws();
            if self.peek() == Some(')') {
                return Err(FilterError::Unexpected {
                    found: "')'".to_owned(),
                    position: self.pos,
                    expected: "an expression inside '()'",
                });
            }
            let inner = self.parse_expression()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return Err(FilterError::UnclosedParen { position: start });
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(inner);
        }
        self.parse_restriction()
    }

    /// `restriction := field op value`.
    fn parse_restriction(&mut self) -> Result<Node, FilterError> {
        let start = self.pos;
        if !self.peek().is_some_and(is_ident_start) {
            return Err(FilterError::Unexpected {
                found: describe(self.peek()),
                position: start,
                expected: EXPECT_TERM,
            });
        }
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        let field = self.slice(start, self.pos);
        if field == "AND" || field == "OR" {
            return Err(FilterError::Unexpected {
                found: format!("'{field}'"),
                position: start,
                expected: EXPECT_TERM,
            });
        }
        if field.split('.').any(str::is_empty) {
            return Err(FilterError::InvalidField {
                field,
                position: start,
            });
        }
        self.skip_ws();
        let op_position = self.pos;
        let op = self.parse_operator(&field, start)?;
        self.note_op(op, op_position)?;
        self.skip_ws();
        let value_position = self.pos;
        if matches!(self.peek(), None | Some(')')) {
            return Err(FilterError::MissingValue {
                field,
                operator: op.as_str(),
                position: value_position,
            });
        }
        let raw = self.parse_value(op.is_regex())?;
        let path = field.split('.').map(Box::from).collect();
        let (test, negate) = match op {
            Op::RegexEq | Op::RegexNe => (
                Test::Regex(compile_regex(&field, &raw.text)?),
                op == Op::RegexNe,
            ),
            Op::Has
                if !raw.quoted
                    && raw.parts.len() == 2
                    && raw.parts.iter().all(String::is_empty) =>
            {
                (Test::Present, false)
            }
            Op::Has => (Test::Has(operand(raw)), false),
            Op::Eq => (Test::Equal(operand(raw)), false),
            Op::Ne => (Test::Equal(operand(raw)), true),
            Op::Lt => (Test::Order(OrderOp::Lt, operand(raw)), false),
            Op::Le => (Test::Order(OrderOp::Le, operand(raw)), false),
            Op::Gt => (Test::Order(OrderOp::Gt, operand(raw)), false),
            Op::Ge => (Test::Order(OrderOp::Ge, operand(raw)), false),
        };
        Ok(Node::Cmp(Comparison { path, test, negate }))
    }

    /// Reads the operator after `field` (which started at `field_position`).
    fn parse_operator(&mut self, field: &str, field_position: usize) -> Result<Op, FilterError> {
        let position = self.pos;
        let mut end = position;
        let (found, unknown) = match self.peek() {
            Some(c) if OPERATOR_CHARS.contains(c) => {
                while self
                    .peek_at(end)
                    .is_some_and(|c| OPERATOR_CHARS.contains(c))
                {
                    end += 1;
                }
                let run = self.slice(position, end);
                let op = match run.as_str() {
                    "=" => Some(Op::Eq),
                    "!=" => Some(Op::Ne),
                    "<" => Some(Op::Lt),
                    "<=" => Some(Op::Le),
                    ">" => Some(Op::Gt),
                    ">=" => Some(Op::Ge),
                    _ => None,
                };
                if let Some(op) = op {
                    self.pos = end;
                    return Ok(op);
                }
                (run, true)
            }
            Some(':') => {
                self.pos += 1;
                return Ok(Op::Has);
            }
            Some(c) if c.is_alphabetic() => {
                while self
                    .peek_at(end)
                    .is_some_and(|c| c.is_alphanumeric() || is_ident_char(c))
                {
                    end += 1;
                }
                let word = self.slice(position, end);
                match word.as_str() {
                    "eq" => {
                        self.pos = end;
                        return Ok(Op::RegexEq);
                    }
                    "ne" => {
                        self.pos = end;
                        return Ok(Op::RegexNe);
                    }
                    "AND" | "OR" | "NOT" => (format!("'{word}'"), false),
                    _ => (word, true),
                }
            }
            other => (describe(other), false),
        };
        // A field that is really a lower-case keyword explains the missing operator best.
        if ["AND", "OR", "NOT"]
            .iter()
            .any(|kw| kw.eq_ignore_ascii_case(field))
        {
            return Err(FilterError::LowercaseKeyword {
                word: field.to_owned(),
                upper: field.to_ascii_uppercase(),
                position: field_position,
            });
        }
        if unknown {
            Err(FilterError::UnknownOperator {
                operator: found,
                position,
            })
        } else {
            Err(FilterError::MissingOperator {
                field: field.to_owned(),
                position,
                found,
            })
        }
    }

    /// Reads a quoted or bare value; `regex` keeps escapes verbatim for the regex engine.
    fn parse_value(&mut self, regex: bool) -> Result<RawValue, FilterError> {
        let start = self.pos;
        let mut raw = RawValue {
            text: String::new(),
            parts: vec![String::new()],
            quoted: false,
        };
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                raw.quoted = true;
                self.pos += 1;
                loop {
                    match self.peek() {
                        None => return Err(FilterError::UnterminatedString { position: start }),
                        Some(c) if c == quote => {
                            self.pos += 1;
                            break;
                        }
                        Some('\\') => {
                            self.pos += 1;
                            let Some(next) = self.peek() else {
                                return Err(FilterError::UnterminatedString { position: start });
                            };
                            self.pos += 1;
                            if !regex {
                                raw.push_escaped(next);
                            } else if next == quote {
                                raw.push(next, true);
                            } else {
                                raw.push('\\', true);
                                raw.push(next, true);
                            }
                        }
                        Some(c) => {
                            self.pos += 1;
                            raw.push(c, regex);
                        }
                    }
                }
            }
            _ => {
                // Bare: up to whitespace or a ')' that closes a group this value did not open.
                let mut open = 0usize;
                while let Some(c) = self.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    if c == ')' {
                        if open == 0 {
                            break;
                        }
                        open -= 1;
                    } else if c == '(' {
                        open += 1;
                    }
                    self.pos += 1;
                    if c != '\\' {
                        raw.push(c, regex);
                        continue;
                    }
                    match self.peek() {
                        Some(next) => {
                            self.pos += 1;
                            if regex {
                                raw.push('\\', true);
                                raw.push(next, true);
                            } else {
                                raw.push_escaped(next);
                            }
                        }
                        None => raw.push_escaped('\\'),
                    }
                }
            }
        }
        Ok(raw)
    }
}

/// Turns a scanned AIP-160 value into an [`Operand`].
fn operand(raw: RawValue) -> Operand {
    let plain = raw.parts.len() == 1;
    Operand {
        number: if plain { parse_num(&raw.text) } else { None },
        boolean: if !plain {
            None
        } else if raw.text.eq_ignore_ascii_case("true") {
            Some(true)
        } else if raw.text.eq_ignore_ascii_case("false") {
            Some(false)
        } else {
            None
        },
        parts: raw.parts.into_iter().map(String::into_boxed_str).collect(),
        text: raw.text.into_boxed_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn route() -> Value {
        json!({
            "kind": "compute#route",
            "id": "4212",
            "name": "adc-3f9c1a-se-1",
            "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default",
            "destRange": "10.10.0.5/32",
            "priority": 2000,
            "tags": ["se", "web"],
            "description": "adc.dev/owner=c1/ns/web",
            "nextHopInstance": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/se-1"
        })
    }

    fn operation(status: &str, op_type: &str) -> Value {
        json!({
            "kind": "compute#operation",
            "id": "18446744073709551615",
            "name": "operation-1715000000000-abc",
            "operationType": op_type,
            "status": status,
            "progress": 0,
            "targetLink": "https://www.googleapis.com/compute/v1/projects/p/global/routes/adc-3f9c1a-se-1",
            "insertTime": "2024-05-01T00:00:00.000-07:00"
        })
    }

    fn instance(cpu: &str, restart: bool) -> Value {
        json!({
            "name": "vm-1",
            "cpuPlatform": cpu,
            "scheduling": {"automaticRestart": restart, "preemptible": false},
            "labels": {"owner": "c1", "env": "dev"},
            "networkInterfaces": [
                {"network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default", "networkIP": "10.0.0.2"},
                {"network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/other", "networkIP": "10.1.0.2"}
            ],
            "deletionProtection": null
        })
    }

    #[track_caller]
    fn m(filter: &str, resource: &Value) -> bool {
        match Filter::parse(filter) {
            Ok(f) => f.matches(resource),
            Err(e) => panic!("filter {filter:?} did not parse: {e}"),
        }
    }

    #[track_caller]
    fn err(filter: &str) -> FilterError {
        match Filter::parse(filter) {
            Ok(f) => panic!("filter {filter:?} parsed: {f:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        for text in ["", "   ", "\t\n"] {
            let f = Filter::parse(text).unwrap();
            assert!(f.is_match_all());
            assert!(f.matches(&route()));
            assert!(f.matches(&Value::Null));
        }
        assert!(!Filter::parse("name = x").unwrap().is_match_all());
    }

    #[test]
    fn equality_on_strings() {
        let r = route();
        assert!(m("name = adc-3f9c1a-se-1", &r));
        assert!(m("name = \"adc-3f9c1a-se-1\"", &r));
        assert!(m("name = 'adc-3f9c1a-se-1'", &r));
        assert!(m("name=adc-3f9c1a-se-1", &r));
        assert!(!m("name = \"adc-route-1\"", &r));
        assert!(
            !m("name = adc-3f9c1a-se", &r),
            "= is exact, not a prefix match"
        );
        assert!(!m("name = ADC-3F9C1A-SE-1", &r), "= is case-sensitive");
        assert!(m("name != foo", &r));
        assert!(!m("name != adc-3f9c1a-se-1", &r));
        assert!(m("kind = compute#route", &r));
        assert!(m("destRange = 10.10.0.5/32", &r));
        assert!(!m("name = \"\"", &r));
        assert!(m("name != \"\"", &r));
        assert!(m("x = \"\"", &json!({"x": ""})));
    }

    #[test]
    fn url_values_quoted_or_bare() {
        let r = route();
        let net = "https://www.googleapis.com/compute/v1/projects/p/global/networks/default";
        assert!(m(&format!("network = \"{net}\""), &r));
        assert!(m(&format!("network = {net}"), &r));
        assert!(m(&format!("(network = {net})"), &r));
        assert!(m(
            &format!("(network = {net}) (name = adc-3f9c1a-se-1)"),
            &r
        ));
        assert!(m(
            "nextHopInstance = https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/se-1",
            &r
        ));
        assert!(!m(&format!("network = {net}2"), &r));
    }

    #[test]
    fn glob_in_equality() {
        let r = route();
        assert!(m("name = \"adc-*\"", &r));
        assert!(m("name = adc-*", &r));
        assert!(m("name = \"adc-*-se-1\"", &r));
        assert!(m("name = \"*-se-1\"", &r));
        assert!(m("name = *", &r));
        assert!(m("name = \"a*c*s*1\"", &r));
        assert!(!m("name = \"*-se-2\"", &r));
        assert!(!m("name = \"adc-3f9c1a-se-1*x\"", &r));
        assert!(
            !m("name = \"adc-3f9c1a*a-se-1\"", &r),
            "prefix and suffix may not overlap"
        );
        assert!(!m("name != \"adc-*\"", &r));
        assert!(m("name != \"xyz-*\"", &r));
        assert!(
            m("priority = 2*", &r),
            "globs apply to the JSON text of numbers"
        );
        assert!(m("tags = \"w*\"", &r));
        // An escaped star is a literal star.
        assert!(!m("name = \"adc-\\*\"", &r));
        assert!(m("name = \"a\\*b\"", &json!({"name": "a*b"})));
        assert!(m("name = a\\*b", &json!({"name": "a*b"})));
        assert!(!m("name = a\\*b", &json!({"name": "axxb"})));
    }

    #[test]
    fn numeric_comparisons() {
        let r = route();
        assert!(m("priority >= 1000", &r));
        assert!(m("priority >= 2000", &r));
        assert!(!m("priority >= 2001", &r));
        assert!(m("priority > 1999", &r));
        assert!(!m("priority > 2000", &r));
        assert!(m("priority < 2001", &r));
        assert!(!m("priority < 2000", &r));
        assert!(m("priority <= 2000", &r));
        assert!(!m("priority <= 1999.5", &r));
        assert!(m("priority = 2000", &r));
        assert!(m("priority = 2000.0", &r));
        assert!(m("priority = 2e3", &r));
        assert!(m("priority = \"2000\"", &r));
        assert!(!m("priority != 2000", &r));
        assert!(m("priority != 1000", &r));
        assert!(m("priority > -1", &r));
        assert!(!m("priority = abc", &r));
        assert!(m("priority != abc", &r));
        assert!(
            !m("priority > abc", &r),
            "a number and a word are not comparable"
        );
        // uint64 ids are JSON strings: compared numerically when both parse ("4212" > "10000" as text).
        assert!(m("id < 10000", &r));
        assert!(m("id > 999", &r));
        assert!(m("id = 4212", &r));
        assert!(m("id = 04212", &r));
        let op = operation("DONE", "insert");
        assert!(m("id = 18446744073709551615", &op));
        assert!(
            m("id > 18446744073709551614", &op),
            "integers are compared exactly, not as f64"
        );
        assert!(!m("id < 18446744073709551615", &op));
        assert!(m("progress = 0", &op));
        assert!(m("x < 1.5", &json!({"x": 1.25})));
        assert!(m("x = -3", &json!({"x": -3})));
    }

    #[test]
    fn string_ordering_is_lexicographic() {
        let r = route();
        assert!(m("name > adc-", &r));
        assert!(m("name < b", &r));
        assert!(!m("name < adc", &r));
        assert!(m("name >= adc-3f9c1a-se-1", &r));
        assert!(m("name <= adc-3f9c1a-se-1", &r));
        let op = operation("DONE", "insert");
        assert!(m("insertTime > \"2024-04-30\"", &op));
        assert!(!m("insertTime > \"2024-05-02\"", &op));
        assert!(
            m("destRange > 10", &r),
            "10.10.0.5/32 is not a number: compared as text"
        );
    }

    #[test]
    fn has_operator() {
        let r = route();
        assert!(m("description : \"owner=c1\"", &r));
        assert!(m("description:adc.dev", &r));
        assert!(m("description:web", &r));
        assert!(!m("description : \"adc-owner\"", &r));
        assert!(!m("description:OWNER", &r), ": is case-sensitive");
        assert!(
            m("description:\"adc*web\"", &r),
            "wildcards inside a substring match"
        );
        assert!(!m("description:\"web*adc\"", &r));
        assert!(m("name:se-1", &r));
        assert!(m("priority:2000", &r), "on numbers ':' is equality");
        assert!(!m("priority:200", &r));
        assert!(m("tags:se", &r), "arrays: any element");
        assert!(m("tags:eb", &r), "string elements: substring");
        assert!(!m("tags:xyz", &r));
        assert!(
            m("name:\"\"", &r),
            "the empty string is a substring of everything"
        );

        let i = instance("Intel Skylake", true);
        assert!(m("labels.owner:*", &i));
        assert!(m("labels.owner:c1", &i));
        assert!(!m("labels.missing:*", &i));
        assert!(m("labels:owner", &i), "objects: key presence");
        assert!(!m("labels:c1", &i));
        assert!(m("labels:*", &i));
        assert!(m("name:*", &r));
        assert!(m("tags:*", &r));
        assert!(!m("deletionProtection:*", &i), "null is absent");
        assert!(m("scheduling.preemptible:false", &i));
        // A quoted star is a wildcard inside a substring match, so it needs a string value.
        assert!(m("name:\"*\"", &r));
        assert!(!m("priority:\"x*\"", &r));
    }

    #[test]
    fn array_fields() {
        let r = route();
        assert!(m("tags = web", &r));
        assert!(m("tags = se", &r));
        assert!(!m("tags = we", &r));
        assert!(
            !m("tags != web", &r),
            "!= is the negation of = over the whole array"
        );
        assert!(m("tags != db", &r));
        assert!(m("tags > sa", &r));
        assert!(!m("tags > zz", &r));
        assert!(m("tags eq w.*", &r));
        assert!(!m("tags eq w", &r));
        assert!(m("tags ne db", &r));
        assert!(!m("tags ne se", &r));
        assert!(!m("tags = x", &json!({"tags": []})));
        assert!(m("tags != x", &json!({"tags": []})));
        assert!(
            m("x = 3", &json!({"x": [1, [2, 3]]})),
            "nested arrays are searched"
        );
    }

    #[test]
    fn nested_fields() {
        let i = instance("Intel Skylake", true);
        assert!(m("scheduling.automaticRestart = true", &i));
        assert!(!m("scheduling.automaticRestart = false", &i));
        assert!(m("scheduling.automaticRestart != false", &i));
        assert!(m("scheduling.automaticRestart = TRUE", &i));
        assert!(m("scheduling.preemptible = false", &i));
        assert!(m("scheduling.preemptible < true", &i));
        assert!(!m("scheduling.preemptible = yes", &i));
        assert!(m("labels.env = dev", &i));
        // Paths descend through arrays of objects.
        assert!(m("networkInterfaces.networkIP = 10.1.0.2", &i));
        assert!(m("networkInterfaces.network = \"*/networks/other\"", &i));
        assert!(!m("networkInterfaces.networkIP = 10.9.0.2", &i));
        assert!(m("networkInterfaces.networkIP eq 10\\.0\\..*", &i));
        assert!(m("a.b.c = 1", &json!({"a": {"b": {"c": 1}}})));
        assert!(m("a.b-c_d = 1", &json!({"a": {"b-c_d": 1}})));
    }

    #[test]
    fn missing_fields() {
        let r = route();
        for (filter, want) in [
            ("zone = x", false),
            ("zone != x", true),
            ("zone > 1", false),
            ("zone >= 1", false),
            ("zone < 1", false),
            ("zone <= 1", false),
            ("zone : x", false),
            ("zone:*", false),
            ("zone eq .*", false),
            ("zone ne .*", true),
            ("scheduling.automaticRestart = true", false),
            ("scheduling.automaticRestart != true", true),
            ("name.sub = x", false),
            ("name.sub != x", true),
            ("NOT zone = x", true),
        ] {
            assert_eq!(m(filter, &r), want, "{filter}");
        }
        let i = instance("x", true);
        assert!(
            !m("deletionProtection = null", &i),
            "null counts as missing"
        );
        assert!(m("deletionProtection != false", &i));
        assert!(!m("labels = c1", &i), "= on an object is false");
    }

    #[test]
    fn operation_filters() {
        let running = operation("RUNNING", "insert");
        let done = operation("DONE", "insert");
        let delete = operation("PENDING", "delete");
        assert!(m("status != DONE", &running));
        assert!(!m("status != DONE", &done));
        assert!(m("status = RUNNING", &running));
        assert!(!m("status = RUNNING", &delete));
        let f = Filter::parse("(operationType = insert) AND (status != DONE)").unwrap();
        assert!(f.matches(&running));
        assert!(!f.matches(&done));
        assert!(!f.matches(&delete));
        let f = Filter::parse("(operationType = insert) (status != DONE)").unwrap();
        assert!(f.matches(&running) && !f.matches(&done) && !f.matches(&delete));
        assert!(m("targetLink = \"*/routes/adc-*\"", &running));
        assert!(m("targetLink eq .*/routes/adc-.*", &running));
    }

    #[test]
    fn precedence_or_binds_tighter_than_and() {
        // Google's own example: (A OR B) AND C under AIP-160.
        let f = Filter::parse(
            "(cpuPlatform = \"Intel Skylake\") OR (cpuPlatform = \"Intel Broadwell\") AND (scheduling.automaticRestart = true)",
        )
        .unwrap();
        assert!(f.matches(&instance("Intel Skylake", true)));
        assert!(f.matches(&instance("Intel Broadwell", true)));
        assert!(
            !f.matches(&instance("Intel Skylake", false)),
            "conventional precedence would match"
        );
        assert!(!f.matches(&instance("AMD Rome", true)));

        let r = route(); // a: false, b: false, c: true
        let (a, b, c) = ("name = nope", "priority = 1", "tags = web");
        assert!(!m(&format!("{a} AND {b} OR {c}"), &r), "a AND (b OR c)");
        assert!(m(&format!("({a} AND {b}) OR {c}"), &r));
        assert!(!m(&format!("{a} {b} OR {c}"), &r), "implicit AND too");
        assert!(m(&format!("{c} OR {a} AND {c}"), &r));
        assert!(m(&format!("{a} OR {b} OR {c}"), &r));
        assert!(!m(&format!("{c} AND {c} AND {a}"), &r));
        assert!(m(&format!("{c} {c} {c}"), &r));
    }

    #[test]
    fn negation() {
        let r = route();
        assert!(m("NOT name = foo", &r));
        assert!(!m("NOT name = adc-3f9c1a-se-1", &r));
        assert!(m("-name = foo", &r));
        assert!(m("- name = foo", &r));
        assert!(!m("-name:adc", &r));
        assert!(m("NOT (name = foo)", &r));
        assert!(m("NOT(name = foo)", &r));
        assert!(!m("-(name = foo OR tags = web)", &r));
        assert!(m("NOT NOT tags = web", &r));
        assert!(m("--tags = web", &r));
        // NOT binds tighter than OR and AND.
        assert!(m("NOT tags = web OR priority = 2000", &r), "(NOT a) OR b");
        assert!(
            !m("NOT tags = web AND priority = 2000", &r),
            "(NOT a) AND b"
        );
        assert!(m("NOT (tags = web AND priority = 1)", &r));
        // A field that merely starts with NOT is a field.
        assert!(m("NOTE = x", &json!({"NOTE": "x"})));
        assert!(m("NOT.x = 1", &json!({"NOT": {"x": 1}})));
    }

    #[test]
    fn regex_syntax() {
        let r = route();
        assert!(m("name eq adc-.*", &r));
        assert!(m("name eq 'adc-[0-9a-f]+-se-1'", &r));
        assert!(m("name eq \"adc-[0-9a-f]+-se-1\"", &r));
        assert!(!m("name eq \"adc-[0-9a-f]+-se-2\"", &r));
        assert!(m("name ne .*se-2", &r));
        assert!(!m("name ne .*se-1", &r));
        assert!(m("(name eq adc-.*) (network eq .*/networks/default)", &r));
        assert!(!m("(name eq adc-.*) (network eq .*/networks/other)", &r));
        assert!(m("(name eq adc-.*) (network ne .*/networks/other)", &r));
        assert!(m("(name eq adc-.*) AND (network ne .*/networks/other)", &r));
        assert!(m("name eq adc-.* network eq .*default", &r));
        assert!(m("destRange eq '10\\.10\\.0\\.5/32'", &r));
        assert!(m("destRange eq 10\\.10\\.0\\.5/32", &r));
        assert!(!m("destRange eq 10\\.10\\.0\\.6/32", &r));
        // Numbers and booleans are matched against their JSON text.
        assert!(m("priority eq 2000", &r));
        assert!(m("priority eq 2\\d+", &r));
        assert!(!m("priority eq 200", &r));
        let i = instance("Intel Skylake", true);
        assert!(m("scheduling.preemptible eq false", &i));
        assert!(m("scheduling.automaticRestart eq t.*", &i));
        assert!(m("cpuPlatform eq \"Intel Sky.*\"", &i));
        assert!(m("cpuPlatform eq 'Intel Skylake'", &i));
        assert!(!m("labels eq .*", &i), "objects never match eq");
        assert!(m("labels ne .*", &i));
        // Parentheses inside bare literals are balanced, so groups work unquoted.
        assert!(m("name eq (foo|adc-.*)", &r));
        assert!(m("(name eq (foo|adc-.*)-se-1)", &r));
        assert!(m(
            "(name eq adc-(3f9c1a|x)-se-(1|2)) (priority eq 2000)",
            &r
        ));
        // Escaped quotes inside quoted literals.
        assert!(m(r#"d eq "say \"hi\"""#, &json!({"d": "say \"hi\""})));
        assert!(m(r"d eq 'it\'s'", &json!({"d": "it's"})));
        assert!(
            m(r"d eq 'a\sb'", &json!({"d": "a b"})),
            "other escapes reach the regex engine"
        );
        assert!(m("d eq 'a b'", &json!({"d": "a b"})));
    }

    #[test]
    fn regex_is_anchored() {
        let r = route();
        assert!(!m("name eq adc", &r));
        assert!(!m("name eq 3f9c1a", &r));
        assert!(!m("name eq se-1", &r));
        assert!(m("name ne adc", &r));
        // Alternation is wrapped as a whole: ^(?:a|b)$, not ^a|b$.
        assert!(m("name eq foo|adc-3f9c1a-se-1", &r));
        assert!(!m("name eq adc|zzz", &r));
        assert!(!m("name eq zzz|adc", &r));
        assert!(m("d eq ''", &json!({"d": ""})));
        assert!(!m("d eq ''", &json!({"d": "x"})));
    }

    #[test]
    fn quoting_and_escapes() {
        let v = json!({"d": "Intel Skylake", "q": "a\"b", "s": "it's", "p": "a)b", "b": "x\\y"});
        assert!(m("d = \"Intel Skylake\"", &v));
        assert!(m("d = 'Intel Skylake'", &v));
        assert!(!m("d = Intel", &json!({"d": "Intel Skylake"})));
        assert!(
            m("d = Intel\\ Skylake", &v),
            "escaped space in a bare value"
        );
        assert!(m(r#"q = "a\"b""#, &v));
        assert!(m(r#"q = 'a"b'"#, &v));
        assert!(m(r"s = 'it\'s'", &v));
        assert!(m("s = \"it's\"", &v));
        assert!(m("s = it's", &v));
        assert!(m(r"p = a\)b", &v));
        assert!(m("p = 'a)b'", &v));
        assert!(m(r"(p = 'a)b')", &v));
        assert!(m(r"b = 'x\\y'", &v));
        assert!(
            m("x = a(b)", &json!({"x": "a(b)"})),
            "balanced parentheses stay in a bare value"
        );
        assert!(m("(x = a(b))", &json!({"x": "a(b)"})));
        assert!(
            m("x = \"true\"", &json!({"x": true})),
            "quoting does not change the type"
        );
        assert!(m("x = é", &json!({"x": "é"})));
    }

    #[test]
    fn error_messages_say_what_and_where() {
        assert_eq!(
            err("(name = a) AND b = c)").to_string(),
            "unexpected ')' at position 20: no matching '('"
        );
        assert_eq!(
            err("(name = a) AND )").to_string(),
            "unexpected ')' at position 15; expected a field name, '(', NOT or '-'"
        );
        let e = err("name eq 'a('");
        assert_eq!(
            e,
            FilterError::InvalidRegex {
                field: "name".into(),
                pattern: "a(".into(),
                message: "unclosed group".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "invalid regular expression 'a(' for field name: unclosed group"
        );
        assert!(
            err("(name eq a) (priority > 1)")
                .to_string()
                .starts_with("cannot mix regular-expression (eq/ne) and comparison operators")
        );
    }

    #[test]
    fn parenthesis_errors() {
        assert_eq!(err("(name = a"), FilterError::UnclosedParen { position: 0 });
        assert_eq!(
            err("((name = a) AND (b = c)"),
            FilterError::UnclosedParen { position: 0 }
        );
        assert_eq!(
            err("name = a)"),
            FilterError::UnmatchedCloseParen { position: 8 }
        );
        assert_eq!(
            err(")"),
            FilterError::Unexpected {
                found: "')'".into(),
                position: 0,
                expected: EXPECT_TERM,
            }
        );
        assert!(matches!(
            err("()"),
            FilterError::Unexpected { position: 1, .. }
        ));
        assert!(matches!(
            err("a = 1 ( )"),
            FilterError::Unexpected { position: 8, .. }
        ));
        assert_eq!(
            err("(name eq (a|b)"),
            FilterError::UnclosedParen { position: 0 }
        );
    }

    #[test]
    fn value_and_operator_errors() {
        assert_eq!(
            err("name ="),
            FilterError::MissingValue {
                field: "name".into(),
                operator: "=",
                position: 6,
            }
        );
        assert!(matches!(
            err("(name != )"),
            FilterError::MissingValue {
                operator: "!=",
                position: 9,
                ..
            }
        ));
        assert!(matches!(
            err("name eq"),
            FilterError::MissingValue { operator: "eq", .. }
        ));
        assert!(matches!(
            err("labels.owner:"),
            FilterError::MissingValue { operator: ":", .. }
        ));
        assert_eq!(
            err("name == a"),
            FilterError::UnknownOperator {
                operator: "==".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name =~ a"),
            FilterError::UnknownOperator {
                operator: "=~".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name ~ a"),
            FilterError::UnknownOperator {
                operator: "~".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name <> a"),
            FilterError::UnknownOperator {
                operator: "<>".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name like a"),
            FilterError::UnknownOperator {
                operator: "like".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name EQ a"),
            FilterError::UnknownOperator {
                operator: "EQ".into(),
                position: 5
            }
        );
        assert_eq!(
            err("name"),
            FilterError::MissingOperator {
                field: "name".into(),
                position: 4,
                found: "end of filter".into(),
            }
        );
        assert!(matches!(
            err("name \"x\""),
            FilterError::MissingOperator { position: 5, .. }
        ));
        assert!(matches!(
            err("name AND b = c"),
            FilterError::MissingOperator { .. }
        ));
        assert!(matches!(err("(name)"), FilterError::MissingOperator { .. }));
        assert_eq!(
            err("name = \"abc"),
            FilterError::UnterminatedString { position: 7 }
        );
        assert_eq!(
            err("name = 'abc\\'"),
            FilterError::UnterminatedString { position: 7 }
        );
        assert_eq!(
            err("name eq \"abc\\"),
            FilterError::UnterminatedString { position: 8 }
        );
        assert_eq!(
            err("name. = x"),
            FilterError::InvalidField {
                field: "name.".into(),
                position: 0
            }
        );
        assert_eq!(
            err("a..b = x"),
            FilterError::InvalidField {
                field: "a..b".into(),
                position: 0
            }
        );
        assert!(matches!(
            err(".name = x"),
            FilterError::Unexpected { position: 0, .. }
        ));
        assert!(matches!(
            err("= x"),
            FilterError::Unexpected { position: 0, .. }
        ));
        assert!(matches!(
            err("9x = 1"),
            FilterError::Unexpected { position: 0, .. }
        ));
        assert!(matches!(
            err("name = a AND"),
            FilterError::Unexpected { position: 12, .. }
        ));
        assert!(matches!(
            err("name = a OR"),
            FilterError::Unexpected { position: 11, .. }
        ));
        assert!(matches!(
            err("NOT"),
            FilterError::Unexpected { position: 3, .. }
        ));
        assert!(matches!(
            err("-"),
            FilterError::Unexpected { position: 1, .. }
        ));
        assert_eq!(
            err("AND a = b"),
            FilterError::Unexpected {
                found: "'AND'".into(),
                position: 0,
                expected: EXPECT_TERM,
            }
        );
        assert!(matches!(
            err("a = 1 OR OR b = 2"),
            FilterError::Unexpected { position: 9, .. }
        ));
        assert_eq!(
            err("(a = 1) and (b = 2)"),
            FilterError::LowercaseKeyword {
                word: "and".into(),
                upper: "AND".into(),
                position: 8,
            }
        );
        assert!(matches!(
            err("a = 1 or b = 2"),
            FilterError::LowercaseKeyword { position: 6, .. }
        ));
        assert!(matches!(
            err("not a = 1"),
            FilterError::LowercaseKeyword { position: 0, .. }
        ));
        // But fields with those names are fine when an operator follows.
        assert!(m("or = 1", &json!({"or": 1})));
    }

    #[test]
    fn regex_errors() {
        for bad in [
            "name eq 'a('",
            "name eq \"[z-a]\"",
            "name eq *",
            "name ne 'a{2,1}'",
            "name eq (?P<x",
        ] {
            assert!(
                matches!(err(bad), FilterError::InvalidRegex { .. }),
                "{bad}"
            );
        }
        let FilterError::InvalidRegex { message, .. } = err("name eq '[z-a]'") else {
            panic!()
        };
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn mixing_syntaxes_is_an_error() {
        assert_eq!(
            err("(name eq a) (priority > 1)"),
            FilterError::MixedSyntax {
                regex_operator: "eq",
                regex_position: 6,
                comparison_operator: ">",
                comparison_position: 22,
            }
        );
        assert_eq!(
            err("name = a AND network ne b"),
            FilterError::MixedSyntax {
                regex_operator: "ne",
                regex_position: 21,
                comparison_operator: "=",
                comparison_position: 5,
            }
        );
        assert!(matches!(
            err("labels.owner:* name eq x"),
            FilterError::MixedSyntax { .. }
        ));
        assert!(
            err("name eq a name != b")
                .to_string()
                .contains("cannot mix")
        );
    }

    #[test]
    fn regex_syntax_allows_only_and() {
        assert_eq!(
            err("(name eq a) OR (name eq b)"),
            FilterError::RegexLogic {
                keyword: "OR",
                position: 12
            }
        );
        assert_eq!(
            err("NOT name eq a"),
            FilterError::RegexLogic {
                keyword: "NOT",
                position: 0
            }
        );
        assert_eq!(
            err("(name eq a) -(name eq b)"),
            FilterError::RegexLogic {
                keyword: "-",
                position: 12
            }
        );
        assert!(Filter::parse("(name eq a) AND (name ne b)").is_ok());
    }

    #[test]
    fn length_limit() {
        let long = "a".repeat(MAX_FILTER_LEN + 1);
        assert_eq!(
            err(&long),
            FilterError::TooLong {
                length: MAX_FILTER_LEN + 1,
                max: MAX_FILTER_LEN
            }
        );
        assert!(err(&long).to_string().contains("4096"));
        let prefix = "name = ";
        let ok = format!("{prefix}{}", "a".repeat(MAX_FILTER_LEN - prefix.len()));
        assert_eq!(ok.chars().count(), MAX_FILTER_LEN);
        assert!(Filter::parse(&ok).is_ok());
        // Characters are counted, not bytes.
        let wide = format!("{prefix}{}", "é".repeat(MAX_FILTER_LEN - prefix.len()));
        assert!(Filter::parse(&wide).is_ok());
    }

    #[test]
    fn depth_limit() {
        let nest = |n: usize| format!("{}name = a{}", "(".repeat(n), ")".repeat(n));
        assert!(m(&nest(MAX_DEPTH), &json!({"name": "a"})));
        assert_eq!(
            err(&nest(MAX_DEPTH + 1)),
            FilterError::TooDeep {
                position: MAX_DEPTH,
                max: MAX_DEPTH
            }
        );
        let nots = |n: usize| format!("{}name = a", "NOT ".repeat(n));
        assert!(
            m(&nots(MAX_DEPTH), &json!({"name": "a"})),
            "an even number of NOTs"
        );
        assert!(matches!(
            err(&nots(MAX_DEPTH + 1)),
            FilterError::TooDeep { .. }
        ));
        assert!(matches!(
            err(&format!("{}name = a", "-".repeat(MAX_DEPTH + 1))),
            FilterError::TooDeep { .. }
        ));
        assert!(matches!(
            err(&"(".repeat(4000)),
            FilterError::TooDeep { .. }
        ));
        // Depth is nesting, not length: many sibling groups are fine.
        let siblings = vec!["(name = a)"; 200].join(" OR ");
        assert!(m(&siblings, &json!({"name": "a"})));
    }

    #[test]
    fn filter_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Filter>();
        let f = Filter::parse("(name eq adc-.*)").unwrap();
        let g = f.clone();
        assert!(g.matches(&route()));
        assert!(format!("{f:?}").contains("Regex"));
    }

    #[test]
    fn number_text_handles_all_numbers() {
        assert!(m("x eq 1\\.5", &json!({"x": 1.5})));
        assert!(m("x eq -?\\d+", &json!({"x": -12})));
        assert!(m("x eq 18446744073709551615", &json!({"x": u64::MAX})));
        assert!(m("x eq .*e.*", &json!({"x": 1e300})));
        assert_eq!(parse_num("1e5").map(|n| n.as_f64()), Some(100_000.0));
        assert!(parse_num("inf").is_none());
        assert!(parse_num("NaN").is_none());
        assert!(parse_num("10.0.0.1").is_none());
        assert!(parse_num("").is_none());
        assert!(parse_num("-").is_none());
        assert!(parse_num(".").is_none());
        assert!(parse_num("1e").is_none());
        assert!(parse_num("1e999").is_none());
        assert!(matches!(parse_num(".5"), Some(Num::Float(_))));
        assert!(matches!(
            parse_num("99999999999999999999999999999999999999999"),
            Some(Num::Float(_))
        ));
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(" ".to_owned()),
            Just("AND".to_owned()),
            Just("OR".to_owned()),
            Just("NOT".to_owned()),
            Just("-".to_owned()),
            Just("name".to_owned()),
            Just("tags".to_owned()),
            Just("priority".to_owned()),
            Just("labels.owner".to_owned()),
            Just("=".to_owned()),
            Just("!=".to_owned()),
            Just("<=".to_owned()),
            Just(">".to_owned()),
            Just(":".to_owned()),
            Just("eq".to_owned()),
            Just("ne".to_owned()),
            Just("*".to_owned()),
            Just("\"".to_owned()),
            Just("'".to_owned()),
            Just("\\".to_owned()),
            Just("adc-.*".to_owned()),
            Just("2000".to_owned()),
            Just("true".to_owned()),
            "[a-z0-9.*()\\[\\]|+?{},-]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_any_chars(s in any::<String>()) {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn token_soup_parses_and_evaluates_without_panicking(tokens in prop::collection::vec(token(), 0..40)) {
            let text = tokens.join(" ");
            if let Ok(f) = Filter::parse(&text) {
                let _ = f.matches(&route());
                let _ = f.matches(&instance("x", false));
                let _ = f.matches(&json!(null));
                let _ = f.matches(&json!([1, "a", {"name": "x"}]));
            }
            let glued = tokens.concat();
            if let Ok(f) = Filter::parse(&glued) {
                let _ = f.matches(&route());
            }
        }

        #[test]
        fn ne_is_the_negation_of_eq(value in "[a-z0-9*-]{0,8}") {
            let r = route();
            let eq = Filter::parse(&format!("name = \"{value}\"")).unwrap().matches(&r);
            let ne = Filter::parse(&format!("name != \"{value}\"")).unwrap().matches(&r);
            prop_assert_ne!(eq, ne);
            let not = Filter::parse(&format!("NOT name = \"{value}\"")).unwrap().matches(&r);
            prop_assert_eq!(not, ne);
        }
    }
}
