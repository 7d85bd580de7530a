//! The option string `new_backend` accepts: `key=value` pairs separated by
//! commas or spaces, e.g. `"threads=2"` or `"threads=2,panic_on=matmul"`.

use kiln_abi::METHODS;

/// Parsed plugin options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// Worker threads of the CPU backend (`None`: one per core).
    pub threads: Option<usize>,
    /// Fault injection for tests of the host: the named method (an entry of
    /// `kiln_abi::METHODS`) panics inside the plugin, which the boundary
    /// guard must turn into an error.
    pub panic_on: Option<String>,
}

/// What `kiln plugins check` and error messages show as the accepted syntax.
pub const USAGE: &str = "threads=N (N >= 1), panic_on=METHOD (testing: that Backend method panics)";

impl PluginOptions {
    pub fn parse(text: &str) -> Result<PluginOptions, String> {
        let mut opts = PluginOptions::default();
        for item in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "option `{item}` needs a value (key=value); accepted: {USAGE}"
                ));
            };
            match key {
                "threads" => {
                    if opts.threads.is_some() {
                        return Err("option `threads` given twice".into());
                    }
                    let n: usize = value
                        .parse()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| format!("threads={value}: expected an integer >= 1"))?;
                    opts.threads = Some(n);
                }
                "panic_on" => {
                    if opts.panic_on.is_some() {
                        return Err("option `panic_on` given twice".into());
                    }
                    if !METHODS.contains(&value) {
                        return Err(format!(
                            "panic_on={value}: no such method; methods: {}",
                            METHODS.join(", ")
                        ));
                    }
                    opts.panic_on = Some(value.to_string());
                }
                _ => {
                    return Err(format!(
                        "unknown option `{key}`; kiln-cpu-plugin accepts: {USAGE}"
                    ))
                }
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_defaults() {
        assert_eq!(PluginOptions::parse("").unwrap(), PluginOptions::default());
        assert_eq!(
            PluginOptions::parse(" , ").unwrap(),
            PluginOptions::default()
        );
    }

    #[test]
    fn parses_threads_and_panic_on() {
        let o = PluginOptions::parse("threads=3, panic_on=matmul").unwrap();
        assert_eq!(o.threads, Some(3));
        assert_eq!(o.panic_on.as_deref(), Some("matmul"));
        let o = PluginOptions::parse("panic_on=adamw threads=1").unwrap();
        assert_eq!((o.threads, o.panic_on.as_deref()), (Some(1), Some("adamw")));
    }

    #[test]
    fn rejects_bad_options_with_a_hint() {
        let e = PluginOptions::parse("thread=2").unwrap_err();
        assert!(
            e.contains("unknown option `thread`") && e.contains("threads=N"),
            "{e}"
        );
        let e = PluginOptions::parse("threads=0").unwrap_err();
        assert!(e.contains("threads=0") && e.contains(">= 1"), "{e}");
        let e = PluginOptions::parse("threads=two").unwrap_err();
        assert!(e.contains("threads=two"), "{e}");
        let e = PluginOptions::parse("threads").unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = PluginOptions::parse("threads=1,threads=2").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = PluginOptions::parse("panic_on=matmull").unwrap_err();
        assert!(e.contains("no such method") && e.contains("matmul"), "{e}");
        // every method of the ABI can be made to panic, ops and buffer calls alike
        for m in METHODS {
            assert!(
                PluginOptions::parse(&format!("panic_on={m}")).is_ok(),
                "{m}"
            );
        }
    }
}
