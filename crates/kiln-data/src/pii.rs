//! Optional PII redaction: e-mail addresses, IPv4 addresses and phone
//! numbers are replaced by placeholders, and counted.

use regex::Regex;
use serde::Deserialize;
use std::sync::LazyLock;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    pub enabled: bool,
    pub email_replacement: String,
    pub ip_replacement: String,
    pub phone_replacement: String,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            enabled: false,
            email_replacement: "<EMAIL>".into(),
            ip_replacement: "<IP>".into(),
            phone_replacement: "<PHONE>".into(),
        }
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b").unwrap()
});
static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
    )
    .unwrap()
});
/// North-American and international forms: +1 (555) 123-4567, 555-123-4567,
/// +44 20 7946 0958. Requires separators so plain numbers are not matched.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}\b").unwrap()
});

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PiiCounts {
    pub emails: u64,
    pub ips: u64,
    pub phones: u64,
}

impl PiiConfig {
    /// The redacted text (None when nothing was found) and the counts.
    pub fn redact(&self, text: &str) -> (Option<String>, PiiCounts) {
        let mut c = PiiCounts::default();
        if !text.contains('@') && !text.bytes().any(|b| b.is_ascii_digit()) {
            return (None, c);
        }
        let mut t = text.to_string();
        for (re, rep, n) in [
            (&*EMAIL, &self.email_replacement, &mut c.emails),
            (&*IPV4, &self.ip_replacement, &mut c.ips),
            (&*PHONE, &self.phone_replacement, &mut c.phones),
        ] {
            let k = re.find_iter(&t).count();
            if k > 0 {
                *n += k as u64;
                t = re.replace_all(&t, rep.as_str()).into_owned();
            }
        }
        let changed = c != PiiCounts::default();
        (changed.then_some(t), c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_counts() {
        let p = PiiConfig {
            enabled: true,
            ..Default::default()
        };
        let (t, c) = p.redact(
            "Write to john.55@mail.example.org or call +1 (555) 234-5678 from 10.0.12.254 today.",
        );
        assert_eq!(
            t.unwrap(),
            "Write to <EMAIL> or call <PHONE> from <IP> today."
        );
        assert_eq!(
            c,
            PiiCounts {
                emails: 1,
                ips: 1,
                phones: 1
            }
        );
        let (t, c) = p.redact("In 1611 there were 31102 verses, and 3.5 is not an address.");
        assert_eq!((t, c), (None, PiiCounts::default()));
    }
}
