//! TypeScript to JavaScript by removing types: a token-level stripper for the subset of
//! TypeScript that evaluate blocks use. Types are replaced by spaces, so line and column
//! numbers in script errors still match the source.
//!
//! Supported: annotations on `let`/`const`/`var` bindings (one per declaration keyword), on
//! function, method, arrow and `catch` parameters (also optional `?:`), return types, class
//! fields and their modifiers; `interface` and
//! `type` declarations; `import type` / `export type`; `as T` and `as const`; the non-null `!`;
//! generic parameters of `function` declarations, `new X<T>(...)` and calls (`f<T>(x)`, written
//! against the name); `implements` clauses.
//! Types themselves may be names, dotted names, generics, unions, intersections, literals,
//! object and tuple types, arrays, function types, `typeof`, `keyof` and `readonly`.
//!
//! Refused with an error (no silent miscompile): `enum`, `namespace`, `module`, `declare`,
//! `abstract`, decorators, parameter properties (`constructor(private x: T)`), which also
//! assign a field. Not recognised (left as is, so QuickJS reports a syntax error):
//! generic arrow functions, conditional and mapped
//! types, a ternary at the top level of a parameter's default value, types inside template
//! literal placeholders.

/// Longest type the stripper follows, in tokens; a guard against runaway input.
const TYPE_TOKENS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    Str,
    Template,
    Regex,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
    newline_before: bool,
}

const KEYWORDS: &[&str] = &["return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else", "yield", "await", "if", "for", "while", "switch", "catch", "with", "function", "class", "const", "let", "var", "export", "import", "extends"];
const PUNCT: &[&str] = &["...", "===", "!==", "**=", "=>", "==", "!=", "<=", ">=", "&&", "||", "??", "?.", "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "**"];

/// Strips the types from TypeScript source.
pub fn strip_types(source: &str) -> Result<String, String> {
    let tokens = tokenize(source)?;
    let mut stripper = Stripper { src: source, tokens: &tokens, remove: Vec::new(), class_depths: Vec::new() };
    stripper.run()?;
    let mut out = source.as_bytes().to_vec();
    for (start, end) in stripper.remove {
        for byte in &mut out[start..end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the script is not UTF-8 after stripping types".to_owned())
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let bytes = src.as_bytes();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    let mut newline = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            newline = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(bytes.len(), |end| i + end);
            continue;
        }
        if src[i..].starts_with("/*") {
            let end = src[i + 2..].find("*/").ok_or("a /* comment is never closed")?;
            newline |= src[i..i + 2 + end].contains('\n');
            i += end + 4;
            continue;
        }
        let start = i;
        let kind = if c == b'"' || c == b'\'' {
            i = skip_string(bytes, i, c)?;
            Kind::Str
        } else if c == b'`' {
            i = skip_template(bytes, i)?;
            Kind::Template
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80 {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$' || bytes[i] >= 0x80) {
                i += 1;
            }
            Kind::Ident
        } else if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'_') {
                i += 1;
            }
            Kind::Number
        } else if c == b'/' && regex_allowed(src, tokens.last()) {
            i = skip_regex(bytes, i)?;
            Kind::Regex
        } else {
            i += PUNCT.iter().find(|p| src[i..].starts_with(**p)).map_or(1, |p| p.len());
            Kind::Punct
        };
        tokens.push(Token { kind, start, end: i, newline_before: newline });
        newline = false;
    }
    Ok(tokens)
}

fn skip_string(bytes: &[u8], mut i: usize, quote: u8) -> Result<usize, String> {
    i += 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\n' => return Err("a string is not closed before the end of its line".into()),
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err("a string is never closed".into())
}

fn skip_template(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    i += 1;
    let mut depth = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'`' if depth == 0 => return Ok(i + 1),
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            b'"' | b'\'' if depth > 0 => i = skip_string(bytes, i, bytes[i])?,
            _ => i += 1,
        }
    }
    Err("a template literal is never closed".into())
}

fn skip_regex(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    i += 1;
    let mut class = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => class = true,
            b']' => class = false,
            b'/' if !class => {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
                return Ok(i);
            }
            b'\n' => return Err("a regular expression is not closed before the end of its line".into()),
            _ => {}
        }
        i += 1;
    }
    Err("a regular expression is never closed".into())
}

/// A `/` starts a regular expression unless it follows something that ends an expression.
fn regex_allowed(src: &str, previous: Option<&Token>) -> bool {
    let Some(token) = previous else { return true };
    let text = &src[token.start..token.end];
    match token.kind {
        Kind::Ident => KEYWORDS.contains(&text),
        Kind::Number | Kind::Str | Kind::Template | Kind::Regex => false,
        Kind::Punct => !matches!(text, ")" | "]" | "}"),
    }
}

struct Stripper<'a> {
    src: &'a str,
    tokens: &'a [Token],
    remove: Vec<(usize, usize)>,
    /// Bracket depths at which a class body is open.
    class_depths: Vec<usize>,
}

impl<'a> Stripper<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.tokens.get(i).map_or("", |token| &self.src[token.start..token.end])
    }

    fn is(&self, i: usize, text: &str) -> bool {
        self.text(i) == text
    }

    fn kind(&self, i: usize) -> Option<Kind> {
        self.tokens.get(i).map(|token| token.kind)
    }

    /// Removes tokens `from..to`.
    fn cut(&mut self, from: usize, to: usize) {
        if from < to && to <= self.tokens.len() {
            self.remove.push((self.tokens[from].start, self.tokens[to - 1].end));
        }
    }

    fn at_statement_start(&self, i: usize) -> bool {
        i == 0 || self.tokens[i].newline_before || matches!(self.text(i - 1), ";" | "{" | "}") || (self.is(i - 1, "export") && self.at_statement_start(i - 1))
    }

    /// Whether token `i` ends an expression (so `as` / `!` after it are TypeScript).
    fn ends_expression(&self, i: usize) -> bool {
        match self.kind(i) {
            Some(Kind::Ident) => !KEYWORDS.contains(&self.text(i)),
            Some(Kind::Number | Kind::Str | Kind::Template | Kind::Regex) => true,
            Some(Kind::Punct) => matches!(self.text(i), ")" | "]" | "}"),
            None => false,
        }
    }

    /// The index just past the bracket that closes the one at `i`.
    fn matching(&self, i: usize) -> Result<usize, String> {
        let mut depth = 0i64;
        for j in i..self.tokens.len() {
            match self.text(j) {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(j + 1);
                    }
                }
                _ => {}
            }
        }
        Err(format!("`{}` is never closed", self.text(i)))
    }

    /// The index just past `<...>` starting at `i`.
    fn matching_angle(&self, i: usize) -> Result<usize, String> {
        let mut depth = 0i64;
        let mut j = i;
        while j < self.tokens.len() {
            match self.text(j) {
                "<" => depth += 1,
                ">" => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(j + 1);
                    }
                }
                "(" | "[" | "{" => {
                    j = self.matching(j)?;
                    continue;
                }
                ";" => break,
                _ => {}
            }
            j += 1;
        }
        Err("a `<` of a generic type is never closed".into())
    }

    /// The index just past the type starting at `i`.
    fn skip_type(&self, mut i: usize) -> Result<usize, String> {
        let start = i;
        loop {
            if i - start > TYPE_TOKENS_MAX {
                return Err(format!("a type is longer than {TYPE_TOKENS_MAX} tokens"));
            }
            while matches!(self.text(i), "|" | "&") {
                i += 1;
            }
            i = self.skip_primary(i)?;
            while self.is(i, "[") {
                i = self.matching(i)?;
            }
            if matches!(self.text(i), "|" | "&") {
                continue;
            }
            return Ok(i);
        }
    }

    fn skip_primary(&self, i: usize) -> Result<usize, String> {
        let text = self.text(i);
        match (self.kind(i), text) {
            (Some(Kind::Punct), "(") => {
                let end = self.matching(i)?;
                if self.is(end, "=>") { self.skip_type(end + 1) } else { Ok(end) }
            }
            (Some(Kind::Punct), "{" | "[") => self.matching(i),
            (Some(Kind::Punct), "<") => {
                let end = self.matching_angle(i)?;
                self.skip_primary(end)
            }
            (Some(Kind::Punct), "-") => Ok(i + 2),
            (Some(Kind::Number | Kind::Str | Kind::Template), _) => Ok(i + 1),
            (Some(Kind::Ident), "keyof" | "readonly" | "unique" | "new" | "typeof") => self.skip_primary(i + 1),
            (Some(Kind::Ident), _) => {
                let mut j = i + 1;
                while self.is(j, ".") && self.kind(j + 1) == Some(Kind::Ident) {
                    j += 2;
                }
                if self.is(j, "<") && !self.tokens[j].newline_before {
                    j = self.matching_angle(j)?;
                }
                Ok(j)
            }
            _ => Err(format!("cannot read a type at `{text}`")),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let depth_at = self.depths();
        let mut i = 0;
        while i < self.tokens.len() {
            let text = self.text(i);
            let statement = self.at_statement_start(i);
            let depth = depth_at[i];
            while self.class_depths.last().is_some_and(|&body| depth < body) {
                self.class_depths.pop();
            }
            if self.kind(i) == Some(Kind::Punct) && text == "@" {
                return Err("decorators are not supported by the TypeScript stripper".into());
            }
            if self.kind(i) != Some(Kind::Ident) && text != "(" && text != "!" && text != "<" {
                i += 1;
                continue;
            }
            i = match text {
                "enum" | "namespace" | "module" | "declare" | "abstract" if statement && self.kind(i + 1) == Some(Kind::Ident) => {
                    return Err(format!("`{text}` is not supported by the TypeScript stripper; write it in plain JavaScript (e.g. a const object for an enum)"));
                }
                "interface" if statement && self.kind(i + 1) == Some(Kind::Ident) => {
                    let mut j = i + 2;
                    while j < self.tokens.len() && !self.is(j, "{") {
                        j += 1;
                    }
                    let end = self.matching(j)?;
                    self.cut(self.export_start(i), end);
                    end
                }
                "type" if statement && self.kind(i + 1) == Some(Kind::Ident) && (self.is(i + 2, "=") || self.is(i + 2, "<")) => {
                    let mut j = i + 2;
                    if self.is(j, "<") {
                        j = self.matching_angle(j)?;
                    }
                    let mut end = self.skip_type(j + 1)?;
                    if self.is(end, ";") {
                        end += 1;
                    }
                    self.cut(self.export_start(i), end);
                    end
                }
                "import" | "export" if statement && self.is(i + 1, "type") => {
                    let mut end = i + 2;
                    while end < self.tokens.len() && !self.is(end, ";") && !(self.tokens[end].newline_before && end > i + 2) {
                        end += 1;
                    }
                    if self.is(end, ";") {
                        end += 1;
                    }
                    self.cut(i, end);
                    end
                }
                "import" if statement => self.skip_statement(i),
                "export" if self.is(i + 1, "{") => self.matching(i + 1)?,
                "let" | "const" | "var" if self.kind(i + 1) == Some(Kind::Ident) || self.is(i + 1, "{") || self.is(i + 1, "[") => {
                    let mut j = i + 1;
                    j = if self.kind(j) == Some(Kind::Ident) { j + 1 } else { self.matching(j)? };
                    if self.is(j, "!") && self.is(j + 1, ":") {
                        self.cut(j, j + 1);
                        j += 1;
                    }
                    if self.is(j, ":") {
                        let end = self.skip_type(j + 1)?;
                        self.cut(j, end);
                        j = end;
                    }
                    j
                }
                "class" => {
                    let mut j = i + 1;
                    while j < self.tokens.len() && !self.is(j, "{") {
                        if self.is(j, "implements") {
                            let start = j;
                            while j < self.tokens.len() && !self.is(j, "{") {
                                j += 1;
                            }
                            self.cut(start, j);
                            break;
                        }
                        if self.is(j, "<") {
                            let end = self.matching_angle(j)?;
                            self.cut(j, end);
                            j = end;
                            continue;
                        }
                        j += 1;
                    }
                    self.class_depths.push(depth_at.get(j).map_or(0, |depth| depth + 1));
                    j + 1
                }
                "function" => {
                    let mut j = i + 1;
                    if self.is(j, "*") {
                        j += 1;
                    }
                    if self.kind(j) == Some(Kind::Ident) {
                        j += 1;
                    }
                    if self.is(j, "<") {
                        let end = self.matching_angle(j)?;
                        self.cut(j, end);
                        j = end;
                    }
                    if self.is(j, "(") {
                        self.strip_signature(j)?;
                        j += 1;
                    }
                    j
                }
                "new" if self.kind(i + 1) == Some(Kind::Ident) => {
                    let mut j = i + 2;
                    while self.is(j, ".") && self.kind(j + 1) == Some(Kind::Ident) {
                        j += 2;
                    }
                    if self.is(j, "<") && self.angle_then_call(j) {
                        let end = self.matching_angle(j)?;
                        self.cut(j, end);
                        j = end;
                    }
                    j
                }
                "as" if i > 0 && self.ends_expression(i - 1) && !self.tokens[i].newline_before => {
                    let end = if self.is(i + 1, "const") { i + 2 } else { self.skip_type(i + 1)? };
                    self.cut(i, end);
                    end
                }
                // A `!` right after an expression is never JavaScript (`!=` and `!==` are
                // tokens of their own): it is the non-null assertion, whatever follows it.
                "!" if i > 0 && self.ends_expression(i - 1) && self.tokens[i].start == self.tokens[i - 1].end => {
                    self.cut(i, i + 1);
                    i + 1
                }
                // Generic arguments of a call, `make<User>(x)` or `obj.get<T>(k)`: TypeScript
                // reads `name<...>(` as one whenever it can, so they are types, removed like
                // any other. Written against the name, as they always are; `a < b > (c)` with
                // spaces is left as the comparisons it is in JavaScript.
                "<" if i > 0
                    && self.kind(i - 1) == Some(Kind::Ident)
                    && !KEYWORDS.contains(&self.text(i - 1))
                    && self.tokens[i].start == self.tokens[i - 1].end
                    && self.angle_then_call(i) =>
                {
                    let end = self.matching_angle(i)?;
                    self.cut(i, end);
                    end
                }
                "(" => {
                    if self.is_parameter_list(i)? {
                        self.strip_signature(i)?;
                    }
                    i + 1
                }
                _ if self.class_depths.last() == Some(&depth) && self.kind(i) == Some(Kind::Ident) => self.strip_class_member(i)?,
                _ => i + 1,
            };
        }
        Ok(())
    }

    /// `export` in front of a removed declaration goes with it.
    fn export_start(&self, i: usize) -> usize {
        if i > 0 && self.is(i - 1, "export") { i - 1 } else { i }
    }

    fn skip_statement(&self, i: usize) -> usize {
        let mut j = i + 1;
        while j < self.tokens.len() && !self.is(j, ";") && !self.tokens[j].newline_before {
            j += 1;
        }
        j
    }

    /// Bracket depth before each token.
    fn depths(&self) -> Vec<usize> {
        let mut depth = 0usize;
        let mut depths = Vec::with_capacity(self.tokens.len());
        for j in 0..self.tokens.len() {
            depths.push(depth);
            match self.text(j) {
                "{" | "(" | "[" => depth += 1,
                "}" | ")" | "]" => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        depths
    }

    /// `<...>` followed by `(`: generic arguments of a `new` expression.
    fn angle_then_call(&self, i: usize) -> bool {
        self.matching_angle(i).is_ok_and(|end| self.is(end, "("))
    }

    /// Whether the `(` at `i` opens parameters: of a function, method, arrow or `catch`.
    fn is_parameter_list(&self, i: usize) -> Result<bool, String> {
        let close = self.matching(i)?;
        let before = if i > 0 { self.text(i - 1) } else { "" };
        if before == "catch" || before == "function" || (i > 1 && self.is(i - 2, "function")) {
            return Ok(true);
        }
        if self.is(close, "=>") {
            return Ok(true);
        }
        let named = i > 0 && self.kind(i - 1) == Some(Kind::Ident) && !KEYWORDS.contains(&before);
        if self.is(close, "{") && named {
            return Ok(true);
        }
        if self.is(close, ":") {
            // A return type, if a function body or an arrow follows the type.
            if let Ok(end) = self.skip_type(close + 1) {
                return Ok(self.is(end, "=>") || (self.is(end, "{") && named));
            }
        }
        Ok(false)
    }

    /// Parameters starting at the `(` at `open`, and the return type after them.
    fn strip_signature(&mut self, open: usize) -> Result<(), String> {
        self.strip_parameters(open)?;
        let close = self.matching(open)?;
        if self.is(close, ":") {
            let end = self.skip_type(close + 1)?;
            self.cut(close, end);
        }
        Ok(())
    }

    fn strip_parameters(&mut self, open: usize) -> Result<(), String> {
        let close = self.matching(open)? - 1;
        let mut j = open + 1;
        let mut param_start = true;
        while j < close {
            let text = self.text(j);
            if param_start && matches!(text, "public" | "private" | "protected" | "readonly") && self.kind(j + 1) == Some(Kind::Ident) {
                // A modifier makes a constructor parameter a field as well (`this.x = x`), which
                // removing types alone cannot do: refused rather than run without the field.
                // The parameter's name follows every modifier (`private readonly balance`).
                let mut at = j + 1;
                while matches!(self.text(at), "public" | "private" | "protected" | "readonly") && self.kind(at + 1) == Some(Kind::Ident) {
                    at += 1;
                }
                let name = self.text(at).to_owned();
                return Err(format!(
                    "parameter properties (`{text} {name}` in a parameter list) are not supported; declare the field in the class and assign it in the constructor (`this.{name} = {name};`)"
                ));
            }
            param_start = false;
            match text {
                "(" | "[" | "{" => j = self.matching(j)?,
                "," => {
                    param_start = true;
                    j += 1;
                }
                "?" if self.is(j + 1, ":") => {
                    self.cut(j, j + 1);
                    j += 1;
                }
                ":" => {
                    let end = self.skip_type(j + 1)?;
                    self.cut(j, end);
                    j = end;
                }
                _ => j += 1,
            }
        }
        Ok(())
    }

    /// A class body member: `name: T`, `name?: T`, modifiers; methods are left to `(`.
    fn strip_class_member(&mut self, i: usize) -> Result<usize, String> {
        let text = self.text(i);
        if matches!(text, "public" | "private" | "protected" | "readonly") && self.kind(i + 1) == Some(Kind::Ident) {
            self.cut(i, i + 1);
            return Ok(i + 1);
        }
        let mut j = i + 1;
        if self.is(j, "?") || self.is(j, "!") {
            if self.is(j + 1, ":") {
                self.cut(j, j + 1);
            }
            j += 1;
        }
        if self.is(j, ":") {
            let end = self.skip_type(j + 1)?;
            self.cut(j, end);
            return Ok(end);
        }
        Ok(i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ts: &str, js: &str) {
        let stripped = strip_types(ts).unwrap_or_else(|err| panic!("{ts}: {err}"));
        let squeeze = |text: &str| text.split_whitespace().collect::<String>();
        assert_eq!(squeeze(&stripped), squeeze(js), "from {ts}");
    }

    #[test]
    fn strips_the_supported_subset() {
        check("const x: number = 1;", "const x = 1;");
        check("let a: Array<{ id: number }> = [];", "let a = [];");
        check("function f<T>(a: T, b?: string): T[] { return [a]; }", "function f(a, b) { return [a]; }");
        check("const g = (a: number, { b }: { b: string }): string => a + b;", "const g = (a, { b }) => a + b;");
        check("const h = async (x: A | B & C) => x;", "const h = async (x) => x;");
        check("interface P { a: string; b: number }\nconst p = 1;", "const p = 1;");
        check("export type U = 'a' | 'b';\nlet u = 'a';", "let u = 'a';");
        check("type F<T> = (x: T) => void\nlet v = 2", "let v = 2");
        check("const n = (input.x as number) + (y as unknown as string).length;", "const n = (input.x ) + (y ).length;");
        check("const k = [1, 2] as const;", "const k = [1, 2] ;");
        check("const m = a!.b + c!;", "const m = a.b + c;");
        // The non-null `!` before any operator, at a line's end, before a closing brace.
        for (ts, js) in [
            ("const x = input.a! + 1;", "const x = input.a + 1;"),
            ("const x = input.a! * 2 - b! - 1;", "const x = input.a * 2 - b - 1;"),
            ("const x = input.a! ?? 0;", "const x = input.a ?? 0;"),
            ("const x = f()! + g[0]!;", "const x = f() + g[0];"),
            ("const x = input.a!\nreturn x", "const x = input.a\nreturn x"),
            ("const f = () => { return input.a! }", "const f = () => { return input.a }"),
            ("const y = a!==b || a!=b || !c || a! === b;", "const y = a!==b || a!=b || !c || a === b;"),
        ] {
            check(ts, js);
        }
        check("const q = a != b ? { x: 1 } : c;", "const q = a != b ? { x: 1 } : c;");
        check("const map = new Map<string, number[]>();", "const map = new Map();");
        check("try { f() } catch (e: unknown) { g(e) }", "try { f() } catch (e) { g(e) }");
        check("class C implements I { private n: number = 1; name?: string; get(x: number): number { return x } }", "class C { n = 1; name; get(x) { return x } }");
        check("const s = `a ${b} c`; // x: number", "const s = `a ${b} c`; // x: number");
        check("const r = /a:b/g.test(x);", "const r = /a:b/g.test(x);");
        check("import { a as b } from 'lodash';", "import { a as b } from 'lodash';");
        check("items.map((item: Item) => item.id)", "items.map((item) => item.id)");
        check("const t = cond ? (a) : b;", "const t = cond ? (a) : b;");
        // Generic arguments of calls, written against the name.
        check("return make<User>(input);", "return make(input);");
        check("const v = store.get<Map<string, number[]>>(key, 1);", "const v = store.get(key, 1);");
        check("const w = id<number>(3) + pair<A, B>(a, b);", "const w = id(3) + pair(a, b);");
        // Spaced, the same tokens are the comparisons JavaScript reads.
        check("const c = a < b > (d);", "const c = a < b > (d);");
        check("if (x<y) { f(x) }", "if (x<y) { f(x) }");
    }

    #[test]
    fn refuses_what_it_cannot_strip() {
        for source in ["enum Color { Red }", "namespace N { }", "declare const x: number;", "@dec class A {}"] {
            assert!(strip_types(source).is_err(), "{source}");
        }
        // A parameter property also assigns a field: stripping its modifier would drop that.
        for (source, name) in [("class A { constructor(private readonly balance: number) {} }", "balance"), ("class A { constructor(x: number, public k: string) {} }", "k")] {
            let err = strip_types(source).unwrap_err();
            assert!(err.contains("parameter properties") && err.contains(&format!("this.{name} = {name};")), "{source}: {err}");
        }
        assert!(strip_types("const s = 'open").is_err());
    }
}
