//! `evaluate` and `evaluate_with_packages`: JavaScript (or TypeScript with its types stripped)
//! in an embedded QuickJS. The sandbox has the language's built-ins only: no module loader, no
//! file system, no network, no timers. Each execution gets its own runtime, bounded in time (an
//! interrupt handler checks a deadline), memory and stack.
//!
//! The code is a function body: `input` holds the block's input and `return` gives the result,
//! which must survive `JSON.stringify`. With packages, `require("lodash")` (or a top-of-script
//! `import _ from "lodash"`) reaches the vetted set in `vendor/js`, and nothing else.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Cfg;
use crate::ts;

/// Longest a script may run when the block does not say, in milliseconds.
pub const EVALUATE_TIME_MS_DEFAULT: u64 = 1_000;
/// Longest a block may let a script run, in milliseconds.
pub const EVALUATE_TIME_MS_MAX: u64 = 10_000;
/// Heap one script execution may use, in bytes (packages count too).
pub const EVALUATE_MEMORY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Native stack one script execution may use, in bytes.
pub const EVALUATE_STACK_BYTES_MAX: usize = 512 * 1024;
/// Longest script source, in bytes.
pub const EVALUATE_SOURCE_BYTES_MAX: usize = 256 * 1024;
/// Scripts running at once in this process, at most; more wait their turn (their time limit
/// starts when they run). Each may use [`EVALUATE_MEMORY_BYTES_MAX`], so this bounds what
/// scripts take together (1 GiB), however many runs and parallel branches there are.
pub const EVALUATE_CONCURRENT_MAX: usize = 16;

static SCRIPT_TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(EVALUATE_CONCURRENT_MAX);
/// Scripts running now, and the most that ever ran at once (for tests and monitoring).
static SCRIPTS_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static SCRIPTS_RUNNING_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most scripts that have run at once in this process.
pub fn scripts_running_peak() -> usize {
    SCRIPTS_RUNNING_PEAK.load(std::sync::atomic::Ordering::Relaxed)
}

/// The vetted packages: name, version and the built single-file source shipped in the crate.
pub const PACKAGES: &[(&str, &str, &str)] = &[
    ("lodash", "4.17.21", include_str!("../vendor/js/lodash.min.js")),
    ("dayjs", "1.11.13", include_str!("../vendor/js/dayjs.min.js")),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    JavaScript,
    TypeScript,
}

/// A checked script, ready to run any number of times.
#[derive(Clone, Debug)]
pub struct Script {
    pub language: Language,
    /// The packages it imports, as indexes into [`PACKAGES`].
    pub packages: Vec<usize>,
    pub timeout_ms: u64,
    /// `evaluate_with_packages`: `require` reaches the vetted set. Plain `evaluate` has no
    /// `require` at all.
    pub with_packages: bool,
    /// The user's code with types stripped and imports turned into `require` calls.
    body: String,
}

impl Script {
    pub(crate) fn parse(cfg: &mut Cfg<'_>, with_packages: bool) -> Script {
        let code = cfg.required_text("code", "the script; `input` is the block input and `return` gives the result").unwrap_or_default();
        let language = match cfg.text("language").as_deref() {
            None | Some("javascript" | "js") => Language::JavaScript,
            Some("typescript" | "ts") => Language::TypeScript,
            Some(other) => {
                cfg.problem("language", format!("`{other}` is not javascript or typescript"));
                Language::JavaScript
            }
        };
        let timeout_ms = cfg.integer("timeout_ms", 1, EVALUATE_TIME_MS_MAX, "milliseconds").unwrap_or(EVALUATE_TIME_MS_DEFAULT);
        let mut script = Script { language, packages: Vec::new(), timeout_ms, with_packages, body: String::new() };
        if code.len() > EVALUATE_SOURCE_BYTES_MAX {
            cfg.problem("code", format!("{} bytes is more than the limit of {EVALUATE_SOURCE_BYTES_MAX}", code.len()));
            return script;
        }
        let code = match language {
            Language::JavaScript => code,
            Language::TypeScript => match ts::strip_types(&code) {
                Ok(code) => code,
                Err(message) => {
                    cfg.problem("code", message);
                    return script;
                }
            },
        };
        let (body, imported) = rewrite_imports(&code);
        for name in imported {
            match PACKAGES.iter().position(|(package, _, _)| *package == name) {
                Some(_) if !with_packages => cfg.problem("code", format!("imports `{name}`, but evaluate runs without packages; use an evaluate_with_packages block")),
                // Not a vetted package: an evaluate_with_packages block would not have it either.
                None if !with_packages => cfg.problem("code", format!("imports `{name}`, but evaluate runs without packages, modules, file system or network; compute the value in the script, or fetch it with an http_request block")),
                Some(index) => script.packages.push(index),
                None => cfg.problem("code", format!("imports `{name}`, which is not in the vetted package set ({})", PACKAGES.iter().map(|(name, _, _)| *name).collect::<Vec<_>>().join(", "))),
            }
        }
        script.packages.sort_unstable();
        script.packages.dedup();
        if let Err(message) = check_syntax(&body) {
            cfg.problem("code", message);
        }
        script.body = body;
        script
    }

    /// Runs the script on `input` on the blocking pool once one of the process's
    /// [`EVALUATE_CONCURRENT_MAX`] turns is free.
    pub async fn run_in_turn(self: std::sync::Arc<Self>, input: Value) -> Result<Value, String> {
        use std::sync::atomic::Ordering;
        let _turn = SCRIPT_TURNS.acquire().await.map_err(|err| format!("the script engine stopped unexpectedly: {err}"))?;
        let running = SCRIPTS_RUNNING.fetch_add(1, Ordering::Relaxed) + 1;
        SCRIPTS_RUNNING_PEAK.fetch_max(running, Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || self.run(&input)).await;
        SCRIPTS_RUNNING.fetch_sub(1, Ordering::Relaxed);
        result.unwrap_or_else(|err| Err(format!("the script engine stopped unexpectedly: {err}")))
    }

    /// Runs the script on `input`. Blocking: call it off the async threads.
    pub fn run(&self, input: &Value) -> Result<Value, String> {
        let runtime = rquickjs::Runtime::new().map_err(|err| format!("cannot start the script engine: {err}"))?;
        runtime.set_memory_limit(EVALUATE_MEMORY_BYTES_MAX);
        runtime.set_max_stack_size(EVALUATE_STACK_BYTES_MAX);
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        runtime.set_interrupt_handler(Some(Box::new(move || Instant::now() >= deadline)));
        let context = rquickjs::Context::full(&runtime).map_err(|err| format!("cannot start the script engine: {err}"))?;
        let source = self.source();
        let outcome = context.with(|ctx| {
            ctx.globals().set("__flowcredits_input", input.to_string()).map_err(|err| err.to_string())?;
            match ctx.eval::<String, _>(source) {
                Ok(json) => Ok(json),
                Err(rquickjs::Error::Exception) => Err(exception_message(&ctx.catch())),
                Err(err) => Err(err.to_string()),
            }
        });
        match outcome {
            Ok(json) => serde_json::from_str(&json).map_err(|err| match err.classify() {
                // JSON.stringify wrote it; what the reader refuses is its depth.
                serde_json::error::Category::Syntax if err.to_string().starts_with("recursion limit exceeded") => "the result is nested more than 128 levels deep, more than a value passed between blocks may be".to_owned(),
                _ => format!("the result is not JSON: {err}"),
            }),
            Err(_) if Instant::now() >= deadline => Err(format!("the script ran longer than its limit of {} ms and was stopped", self.timeout_ms)),
            Err(message) if message.contains("out of memory") => Err(format!("the script used more than the memory limit of {EVALUATE_MEMORY_BYTES_MAX} bytes and was stopped")),
            // The engine reports some failed allocations (in string and object operations) with
            // no error value, as `throw null` does; by then the heap is freed, so which it was
            // cannot be told.
            Err(message) if message == THREW_NOTHING => {
                Err(format!("the script stopped with no error value: it threw null or undefined, or ran out of memory (the limit is {EVALUATE_MEMORY_BYTES_MAX} bytes)"))
            }
            // The wrapper's own checks of what the script returned are not the script's throws.
            Err(message) if message.starts_with(RESULT_REFUSED) => Err(message[RESULT_REFUSED.len()..].to_owned()),
            Err(message) => Err(format!("the script threw: {message}")),
        }
    }

    fn source(&self) -> String {
        let mut source = String::from("(function(){\n\"use strict\";\nvar __modules = {};\n");
        for &index in &self.packages {
            let (name, _, code) = PACKAGES[index];
            // Each package is a UMD bundle: given a CommonJS `module`, it assigns its exports.
            source.push_str(&format!("__modules[{name:?}] = (function(){{ var module = {{ exports: {{}} }}; var exports = module.exports; (function(){{\n{code}\n}}).call(globalThis); return module.exports; }})();\n"));
        }
        if self.with_packages {
            // Only packages the script names literally are bundled into it (see `rewrite_imports`).
            source.push_str("function require(name) { if (Object.prototype.hasOwnProperty.call(__modules, name)) return __modules[name]; throw new Error(\"package `\" + name + \"` is not available: a script gets the vetted packages it names literally, with require(\\\"lodash\\\") or an import line\"); }\n");
        } else {
            source.push_str("var require = undefined;\n");
        }
        source.push_str("var __result = (function(input, require) {\n");
        source.push_str(&self.body);
        source.push_str("\n})(JSON.parse(__flowcredits_input), require);\n");
        source.push_str("if (__result instanceof Promise) throw new Error(\"__flowcredits: the script returned a Promise; scripts run synchronously, so return the value itself\");\n");
        // JSON.stringify gives undefined for a function or a symbol: say what was returned.
        source.push_str("var __json = JSON.stringify(__result === undefined ? null : __result);\n");
        source.push_str("if (__json === undefined) throw new Error(\"__flowcredits: the script returned a \" + typeof __result + \", which is not a JSON value; return an object, array, string, number, boolean or null\");\n");
        source.push_str("return __json;\n})()");
        source
    }
}

thread_local! {
    /// An engine kept per thread for syntax checks only: a flow of many scripts starts no engine
    /// per block. Nothing is ever run in it.
    static SYNTAX_CHECKER: std::cell::RefCell<Option<(rquickjs::Runtime, rquickjs::Context)>> = const { std::cell::RefCell::new(None) };
}

/// Compiles a script's body (as a run wraps it) without running any of it, so that a syntax
/// error is a problem of the flow file, found before anything runs or is charged. The message
/// gives the line in the block's code.
///
/// Compile only, never evaluate: a body can close the wrapper early (`return 1}); while(1){}
/// (function(){`), and evaluating the wrapper would then run that code at load, unmetered.
fn check_syntax(body: &str) -> Result<(), String> {
    // The body starts on the wrapper's second line.
    let wrapped = std::ffi::CString::new(format!("(function(input, require) {{\n{body}\n}})")).map_err(|_| "contains a NUL character".to_owned())?;
    SYNTAX_CHECKER.with(|checker| {
        let mut checker = checker.borrow_mut();
        if checker.is_none() {
            let runtime = rquickjs::Runtime::new().map_err(|err| format!("cannot start the script engine: {err}"))?;
            runtime.set_memory_limit(EVALUATE_MEMORY_BYTES_MAX);
            runtime.set_max_stack_size(EVALUATE_STACK_BYTES_MAX);
            // The full context: compiling goes through the eval intrinsic.
            let context = rquickjs::Context::full(&runtime).map_err(|err| format!("cannot start the script engine: {err}"))?;
            *checker = Some((runtime, context));
        }
        let (_, context) = checker.as_ref().expect("made above");
        context.with(|ctx| {
            let raw = ctx.as_raw().as_ptr();
            let flags = (rquickjs::qjs::JS_EVAL_TYPE_GLOBAL | rquickjs::qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
            // SAFETY: `raw` is this live context; the source is NUL-terminated and its length
            // excludes the NUL; the compiled function is freed once looked at, and an exception
            // is taken from the context by `catch`.
            let compiled = unsafe { rquickjs::qjs::JS_Eval(raw, wrapped.as_ptr(), wrapped.as_bytes().len() as _, c"eval_script".as_ptr(), flags) };
            if !unsafe { rquickjs::qjs::JS_IsException(compiled) } {
                unsafe { rquickjs::qjs::JS_FreeValue(raw, compiled) };
                return Ok(());
            }
            let thrown = ctx.catch();
            let message = exception_message(&thrown);
            let line = thrown.as_exception().and_then(|exception| exception.stack()).and_then(|stack| syntax_error_line(&stack));
            Err(match line {
                // Past the body is the wrapper's closing line: the script stopped mid-way.
                Some(line) if line > body.lines().count().max(1) => format!("does not compile: the script ends before an expression, bracket or string in it is finished ({message})"),
                Some(line) => format!("does not compile, line {line}: {message}"),
                None => format!("does not compile: {message}"),
            })
        })
    })
}

/// The line of the user's code a syntax error's stack names (`at eval_script:3:14`), counted
/// from the body's first line.
fn syntax_error_line(stack: &str) -> Option<usize> {
    let (_, after) = stack.split_once("eval_script:")?;
    let line: usize = after.split(':').next()?.trim().parse().ok()?;
    line.checked_sub(1).filter(|line| *line > 0)
}

/// How the wrapper's errors about a script's result begin (see `source`).
const RESULT_REFUSED: &str = "__flowcredits: ";

/// What a script that threw no value (`null` or `undefined`) is reported as having thrown.
const THREW_NOTHING: &str = "null";

fn exception_message(value: &rquickjs::Value<'_>) -> String {
    if value.is_null() || value.is_undefined() {
        return THREW_NOTHING.to_owned();
    }
    if let Some(exception) = value.as_exception() {
        let message = exception.message().unwrap_or_default();
        return if message.is_empty() { "an error without a message".to_owned() } else { message };
    }
    if let Some(text) = value.as_string().and_then(|text| text.to_string().ok()) {
        return text;
    }
    format!("{value:?}")
}

/// Turns top-of-script ES imports into `require` calls and lists every package the script
/// names, through either form. Supported: `import x from "p"`, `import * as x from "p"`,
/// `import { a, b as c } from "p"` and `require("p")` with a literal name.
fn rewrite_imports(code: &str) -> (String, Vec<String>) {
    let mut names = Vec::new();
    let mut body = String::with_capacity(code.len());
    for line in code.lines() {
        let trimmed = line.trim();
        match parse_import(trimmed) {
            Some((binding, package)) => {
                body.push_str(&format!("const {binding} = require({package:?});\n"));
                names.push(package);
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    let mut rest = code;
    while let Some(at) = rest.find("require(") {
        rest = &rest[at + "require(".len()..];
        let quoted = rest.trim_start();
        if let Some(quote) = quoted.chars().next().filter(|c| matches!(c, '"' | '\'' | '`'))
            && let Some(end) = quoted[1..].find(quote)
        {
            names.push(quoted[1..1 + end].to_owned());
        }
    }
    if code.contains("import(") {
        names.push("import()".to_owned());
    }
    (body, names)
}

fn parse_import(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("import ")?;
    let (clause, source) = rest.rsplit_once(" from ")?;
    let source = source.trim().trim_end_matches(';').trim();
    let package = source.strip_prefix(['"', '\''])?.strip_suffix(['"', '\''])?.to_owned();
    let clause = clause.trim();
    let binding = if let Some(name) = clause.strip_prefix("* as ") {
        name.trim().to_owned()
    } else if clause.starts_with('{') {
        // `{ a, b as c }` becomes the destructuring `{ a, b: c }`.
        clause.replace(" as ", ": ")
    } else {
        clause.to_owned()
    };
    Some((binding, package))
}
