//! Docker's word expansion (BuildKit's `shell.Lex.ProcessWord`), applied by the builder to the
//! arguments of ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ONBUILD
//! and to ARG defaults. RUN, CMD and ENTRYPOINT are never expanded: the shell does that.
//!
//! Quotes are processed for every one of those instructions, not only ENV: `WORKDIR "/a b"` is
//! `/a b`, `USER '$U'` is the literal `$U`. Inside double quotes the escape character only
//! escapes `"`, `$` and itself; outside quotes it escapes anything. Unquoted whitespace is kept,
//! so the legacy `ENV k a  b` form expands to `a  b`. Because ENV and ARG values go through the
//! very same function, there is no separate ENV-value expander.

use std::cell::RefCell;

/// Expands `word` with `lookup` (`None` = unset, which expands to the empty string).
/// `escape` is the Dockerfile's escape character (`\` or `` ` ``).
pub fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, String> {
    Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        lookup,
    }
    .process(None)
}

/// Expands a COPY or ADD heredoc body: `$NAME` and `${...}` forms only, as BuildKit does for a
/// heredoc whose delimiter is unquoted. Quotes and escape characters are body text and stay
/// (an escape character before `$` makes that `$` literal), so a script or a JSON file comes
/// through as written.
pub fn expand_heredoc(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, String> {
    let mut lexer = Lexer {
        chars: body.chars().collect(),
        pos: 0,
        escape,
        lookup,
    };
    let mut out = String::new();
    while let Some(c) = lexer.peek() {
        if c == '$' {
            out.push_str(&lexer.dollar()?);
        } else if c == escape && lexer.chars.get(lexer.pos + 1) == Some(&'$') {
            lexer.pos += 2;
            out.push('$');
        } else {
            lexer.pos += 1;
            out.push(c);
        }
    }
    Ok(out)
}

/// The variable names `word` refers to, first occurrence first, including those only in a
/// `${A:-$B}` default (Docker evaluates both sides). Shell special parameters (`$1`, `$@`, ...)
/// are left out; a syntax error ends the list where it occurs.
pub fn referenced(word: &str, escape: char) -> Vec<String> {
    let names = RefCell::new(Vec::<String>::new());
    let record = |name: &str| {
        let mut names = names.borrow_mut();
        let is_identifier = name.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if is_identifier && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        // Set and non-empty, so `${A:?}` does not stop the scan.
        Some("x".to_string())
    };
    let _ = expand(word, &record, escape);
    names.into_inner()
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    /// Processes up to (and consuming) `stop`, or to the end when `stop` is `None`.
    fn process(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match c {
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        // A trailing escape character is dropped.
                        match self.next() {
                            Some(escaped) => out.push(escaped),
                            None => break,
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
        // The only stop character is the `}` of a `${name:-word}`.
        match stop {
            Some(_) => Err(MISSING_BRACE.into()),
            None => Ok(out),
        }
    }

    /// Everything literal up to the next `'`; nothing can be escaped inside.
    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err("unterminated single quote".into());
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err("unterminated double quote".into());
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            // Only these are escapable; `"\n"` keeps its backslash.
                            Some(e) if e == '"' || e == '$' || e == self.escape => {
                                self.pos += 1;
                                out.push(e);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        match self.next() {
            None => Err(MISSING_BRACE.into()),
            Some('}') => Ok(self.get(&name).unwrap_or_default()),
            Some(':') => {
                let modifier = self.next().ok_or(MISSING_BRACE)?;
                // Looked up before the word so `referenced` lists names in textual order.
                let value = self.get(&name);
                let word = self.modifier_word()?;
                let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
                match modifier {
                    '-' if non_empty => Ok(value.unwrap_or_default()),
                    '-' => Ok(word),
                    '+' if non_empty => Ok(word),
                    '+' => Ok(String::new()),
                    '?' => match value {
                        Some(v) if !v.is_empty() => Ok(v),
                        Some(_) => Err(required(&name, &word, "is not allowed to be empty")),
                        None => Err(required(&name, &word, "is not allowed to be unset")),
                    },
                    m => Err(format!("unsupported modifier ({m}) in substitution")),
                }
            }
            // The colon-less forms test "set" rather than "set and non-empty".
            Some(modifier @ ('-' | '+' | '?')) => {
                let value = self.get(&name);
                let word = self.modifier_word()?;
                match (modifier, value) {
                    ('-', Some(v)) => Ok(v),
                    ('-', None) => Ok(word),
                    ('+', Some(_)) => Ok(word),
                    ('+', None) => Ok(String::new()),
                    (_, Some(v)) => Ok(v),
                    (_, None) => Err(required(&name, &word, "is not allowed to be unset")),
                }
            }
            Some(m) => Err(format!("unsupported modifier ({m}) in substitution")),
        }
    }

    /// The word after a modifier, itself expanded, up to the closing `}`.
    fn modifier_word(&mut self) -> Result<String, String> {
        self.process(Some('}')).map_err(|e| {
            if self.peek().is_none() {
                MISSING_BRACE.into()
            } else {
                e
            }
        })
    }

    /// A variable name: letters, digits and `_`; or a run of digits; or one shell special
    /// parameter character (these never resolve to anything a Dockerfile can set).
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_numeric() {
                while let Some(d) = self.peek().filter(|d| d.is_numeric()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!') {
                self.pos += 1;
                return c.to_string();
            }
            if !c.is_alphanumeric() && c != '_' {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

fn required(name: &str, word: &str, default_message: &str) -> String {
    let message = if word.is_empty() {
        default_message
    } else {
        word
    };
    format!("{name}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("x  y".into()),
            "_x1" => Some("u".into()),
            _ => None,
        }
    }

    #[test]
    fn expansions() {
        let cases = [
            ("plain", "plain"),
            ("$A", "a"),
            ("${A}", "a"),
            ("$A$A", "aa"),
            ("${A}b", "ab"),
            ("$Ab", ""), // the name is `Ab`
            ("$_x1/", "u/"),
            ("$UNSET", ""),
            ("pre-$UNSET-post", "pre--post"),
            ("$", "$"),
            ("a$", "a$"),
            ("$/", "$/"),
            ("$1x", "x"),
            ("$@", ""),
            ("${A:-d}", "a"),
            ("${EMPTY:-d}", "d"),
            ("${UNSET:-d}", "d"),
            ("${UNSET:-$A-$A}", "a-a"),
            ("${UNSET:-${UNSET2:-deep}}", "deep"),
            ("${UNSET:-}", ""),
            ("${UNSET:-a b}", "a b"),
            ("${UNSET:-\\}}", "}"),
            ("${UNSET:-'}'}", "}"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${UNSET:+alt}", ""),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${A:?boom}", "a"),
            ("${SPACED}", "x  y"),
            ("a  b", "a  b"), // unquoted whitespace is kept
        ];
        for (word, want) in cases {
            assert_eq!(expand(word, &vars, '\\').as_deref(), Ok(want), "{word:?}");
        }
    }

    #[test]
    fn quotes_and_escapes() {
        let cases = [
            ("\\$A", "$A"),
            ("\\${A}", "${A}"),
            ("\\a\\b", "ab"),
            ("a\\", "a"),
            ("\\\\", "\\"),
            ("'$A'", "$A"),
            ("'a\\b'", "a\\b"),
            ("\"$A\"", "a"),
            ("\"a b\"", "a b"),
            ("\"\\$A\"", "$A"),
            ("\"\\\"\"", "\""),
            ("\"\\n\"", "\\n"), // only " $ and the escape char are escapable in double quotes
            ("\"'$A'\"", "'a'"),
            ("'\"$A\"'", "\"$A\""),
            ("x\"y\"'z'", "xyz"),
            ("\"${UNSET:-\"q\"}\"", "q"),
            ("\"\"", ""),
        ];
        for (word, want) in cases {
            assert_eq!(expand(word, &vars, '\\').as_deref(), Ok(want), "{word:?}");
        }
    }

    #[test]
    fn backtick_escape() {
        let cases = [
            ("`$A", "$A"),
            ("C:\\$A", "C:\\a"), // backslash is an ordinary character
            ("\"`\"\"", "\""),
            ("\"C:\\dir\"", "C:\\dir"),
        ];
        for (word, want) in cases {
            assert_eq!(expand(word, &vars, '`').as_deref(), Ok(want), "{word:?}");
        }
    }

    #[test]
    fn errors() {
        let cases = [
            ("${A", "syntax error: missing '}'"),
            ("${", "syntax error: missing '}'"),
            ("${A:-x", "syntax error: missing '}'"),
            ("${A:", "syntax error: missing '}'"),
            ("${A:-\"x}", "syntax error: missing '}'"),
            ("${}", "syntax error: bad substitution"),
            ("${:-x}", "syntax error: bad substitution"),
            ("${{A}}", "syntax error: bad substitution"),
            ("${A:=x}", "unsupported modifier (=) in substitution"),
            ("${A#x}", "unsupported modifier (#) in substitution"),
            ("${A/x/y}", "unsupported modifier (/) in substitution"),
            ("${UNSET:?}", "UNSET: is not allowed to be unset"),
            ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
            ("${UNSET:?set it}", "UNSET: set it"),
            ("${UNSET?}", "UNSET: is not allowed to be unset"),
            ("'open", "unterminated single quote"),
            ("\"open", "unterminated double quote"),
        ];
        for (word, want) in cases {
            assert_eq!(expand(word, &vars, '\\'), Err(want.to_string()), "{word:?}");
        }
    }

    #[test]
    fn referenced_names() {
        let cases: &[(&str, &[&str])] = &[
            ("plain", &[]),
            ("$A ${B} $A", &["A", "B"]),
            ("${A:-$B}", &["A", "B"]),
            ("${A:+${C:-$D}}", &["A", "C", "D"]),
            ("'$X' \"$Y\"", &["Y"]),
            ("\\$X $1 $@ $$", &[]),
            ("$OK ${BROKEN", &["OK"]),
        ];
        for &(word, want) in cases {
            assert_eq!(referenced(word, '\\'), want, "{word:?}");
        }
        assert_eq!(referenced("\\$X", '`'), ["X"]);
    }

    #[test]
    fn heredoc_bodies_expand_variables_and_keep_quotes() {
        let lookup = |n: &str| (n == "V").then(|| "val".to_string());
        let cases = [
            ("a $V b\n", "a val b\n"),
            ("\"${V}\" '$V'\n", "\"val\" 'val'\n"),
            ("\\$V and \\n\n", "$V and \\n\n"),
            ("${UNSET:-dflt} ${V:+set}", "dflt set"),
            ("{\"k\": \"x\"}", "{\"k\": \"x\"}"),
            ("cost: 5$", "cost: 5$"),
        ];
        for (body, want) in cases {
            assert_eq!(
                expand_heredoc(body, &lookup, '\\').unwrap(),
                want,
                "{body:?}"
            );
        }
        assert!(expand_heredoc("${V", &lookup, '\\').is_err());
    }
}
