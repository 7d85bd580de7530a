//! A small backtracking matcher for the regular expressions spaCy's English
//! tokenizer uses, read from the syntax trees Python's `re` parser produced
//! (`scripts/make_spacy_en_tables.py`). It has Python's semantics where they
//! decide a token boundary: leftmost start, alternatives tried in order,
//! greedy repeats, fixed-width lookbehind, lookahead, `^` and `$`.

use serde_json::Value;

/// A set of code points: an ASCII bitmap plus sorted inclusive ranges.
#[derive(Clone, Debug, Default)]
pub(crate) struct CharSet {
    ascii: u128,
    ranges: Vec<(u32, u32)>,
}

impl CharSet {
    pub(crate) fn from_ranges(ranges: Vec<(u32, u32)>) -> Self {
        let mut ascii = 0u128;
        for &(lo, hi) in &ranges {
            for c in lo..=hi.min(127) {
                ascii |= 1 << c;
            }
        }
        CharSet { ascii, ranges }
    }

    pub(crate) fn from_json(v: &Value) -> Self {
        let ranges = v
            .as_array()
            .expect("a set is an array of [lo, hi]")
            .iter()
            .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32))
            .collect();
        CharSet::from_ranges(ranges)
    }

    /// A set from a JSON array of single code points.
    pub(crate) fn from_points(v: &Value) -> Self {
        let mut pts: Vec<u32> = v
            .as_array()
            .expect("an array of code points")
            .iter()
            .map(|c| c.as_u64().unwrap() as u32)
            .collect();
        pts.sort_unstable();
        CharSet::from_ranges(pts.into_iter().map(|c| (c, c)).collect())
    }

    #[inline]
    pub(crate) fn contains(&self, c: char) -> bool {
        let c = c as u32;
        if c < 128 {
            return self.ascii >> c & 1 == 1;
        }
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    fn has_non_ascii(&self) -> bool {
        self.ranges.last().is_some_and(|&(_, hi)| hi >= 128)
    }
}

/// Which characters can start a branch.
#[derive(Clone, Copy, Debug)]
struct First {
    ascii: u128,
    non_ascii: bool,
}

#[derive(Debug)]
enum Node {
    Lit(char),
    Set(usize),
    Rep {
        min: usize,
        max: usize,
        sub: Vec<Node>,
    },
    Alt(Alt),
    Look {
        behind: Option<usize>,
        neg: bool,
        sub: Vec<Node>,
    },
    Bol,
    Eol,
}

/// Alternatives, with the branches each next character can start (so the
/// others are skipped without running them; the order is kept).
#[derive(Debug)]
struct Alt {
    branches: Vec<Vec<Node>>,
    /// Indexed by ASCII code, then [`OTHER`] (any other character) and
    /// [`AT_END`] (no character left): branch indices, in order.
    candidates: Vec<Vec<u16>>,
}

const OTHER: usize = 128;
const AT_END: usize = 129;

impl Alt {
    fn new(branches: Vec<Vec<Node>>, sets: &Sets) -> Self {
        let mut candidates = vec![Vec::new(); AT_END + 1];
        for (i, b) in branches.iter().enumerate() {
            let i = u16::try_from(i).expect("under 65536 alternatives");
            // `None`: the branch may match without consuming a character.
            let first = first_of(b, sets);
            for (c, list) in candidates.iter_mut().enumerate() {
                let ok = match first {
                    None => true,
                    Some(_) if c == AT_END => false,
                    Some(f) if c == OTHER => f.non_ascii,
                    Some(f) => f.ascii >> c & 1 == 1,
                };
                if ok {
                    list.push(i);
                }
            }
        }
        Alt {
            branches,
            candidates,
        }
    }

    /// The branches that can match at `pos` of `s`.
    #[inline]
    fn at(&self, s: &[char], pos: usize) -> &[u16] {
        let k = match s.get(pos) {
            None => AT_END,
            Some(&c) if (c as u32) < 128 => c as usize,
            Some(_) => OTHER,
        };
        &self.candidates[k]
    }
}

/// One compiled expression over a shared table of character sets.
#[derive(Debug)]
pub(crate) struct Regex {
    nodes: Vec<Node>,
    /// Every alternative starts with `^`: only position 0 can match.
    anchored: bool,
}

type Sets = [CharSet];

impl Regex {
    pub(crate) fn from_json(v: &Value, sets: &Sets) -> Self {
        let nodes = parse_seq(v, sets);
        let anchored = match nodes.first() {
            Some(Node::Bol) => true,
            Some(Node::Alt(a)) if nodes.len() == 1 => a
                .branches
                .iter()
                .all(|b| matches!(b.first(), Some(Node::Bol))),
            _ => false,
        };
        Regex { nodes, anchored }
    }

    /// Python's `pattern.search(s)`: the first (leftmost) match as char
    /// positions `(start, end)`.
    pub(crate) fn search(&self, sets: &Sets, s: &[char]) -> Option<(usize, usize)> {
        let last = if self.anchored { 0 } else { s.len() };
        (0..=last).find_map(|start| self.match_at(sets, s, start).map(|end| (start, end)))
    }

    /// Python's `pattern.match(s, pos)`: the end of the match starting at `pos`.
    pub(crate) fn match_at(&self, sets: &Sets, s: &[char], pos: usize) -> Option<usize> {
        let mut end = None;
        let m = Matcher { sets, s };
        m.seq(&self.nodes, pos, &mut |e| {
            end = Some(e);
            true
        });
        end
    }

    /// Python's `pattern.finditer(s)` as `(start, end)` char positions.
    pub(crate) fn find_iter(&self, sets: &Sets, s: &[char]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos <= s.len() {
            match self.match_at(sets, s, pos) {
                Some(end) => {
                    out.push((pos, end));
                    pos = if end == pos { pos + 1 } else { end };
                }
                None => pos += 1,
            }
        }
        out
    }
}

struct Matcher<'a> {
    sets: &'a Sets,
    s: &'a [char],
}

impl Matcher<'_> {
    /// Matches `nodes` at `pos`, then calls `k` with the end; true when `k`
    /// accepted (backtracking tries the next way otherwise).
    fn seq(&self, nodes: &[Node], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        let Some((node, rest)) = nodes.split_first() else {
            return k(pos);
        };
        let s = self.s;
        match node {
            Node::Lit(c) => pos < s.len() && s[pos] == *c && self.seq(rest, pos + 1, k),
            Node::Set(i) => {
                pos < s.len() && self.sets[*i].contains(s[pos]) && self.seq(rest, pos + 1, k)
            }
            Node::Bol => pos == 0 && self.seq(rest, pos, k),
            Node::Eol => pos == s.len() && self.seq(rest, pos, k),
            Node::Look { behind, neg, sub } => {
                let found = match behind {
                    None => self.seq(sub, pos, &mut |_| true),
                    Some(w) => pos >= *w && self.seq(sub, pos - w, &mut |e| e == pos),
                };
                found != *neg && self.seq(rest, pos, k)
            }
            Node::Alt(alt) => alt.at(s, pos).iter().any(|&b| {
                self.seq(&alt.branches[b as usize], pos, &mut |e| {
                    self.seq(rest, e, k)
                })
            }),
            Node::Rep { min, max, sub } => {
                // One character per iteration: count the run, then back off.
                if let [single @ (Node::Lit(_) | Node::Set(_))] = sub.as_slice() {
                    let mut n = 0;
                    while n < *max && pos + n < s.len() && self.one(single, s[pos + n]) {
                        n += 1;
                    }
                    return (*min..=n).rev().any(|j| self.seq(rest, pos + j, k));
                }
                self.rep(sub, *min, *max, 0, pos, rest, k)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rep(
        &self,
        sub: &[Node],
        min: usize,
        max: usize,
        count: usize,
        pos: usize,
        rest: &[Node],
        k: &mut dyn FnMut(usize) -> bool,
    ) -> bool {
        if count < max
            && self.seq(sub, pos, &mut |e| {
                e != pos && self.rep(sub, min, max, count + 1, e, rest, k)
            })
        {
            return true;
        }
        count >= min && self.seq(rest, pos, k)
    }

    #[inline]
    fn one(&self, node: &Node, c: char) -> bool {
        match node {
            Node::Lit(l) => *l == c,
            Node::Set(i) => self.sets[*i].contains(c),
            _ => unreachable!(),
        }
    }
}

fn parse_seq(v: &Value, sets: &Sets) -> Vec<Node> {
    v.as_array()
        .expect("a regex is an array of nodes")
        .iter()
        .map(|n| parse_node(n, sets))
        .collect()
}

fn parse_node(v: &Value, sets: &Sets) -> Node {
    let o = v.as_object().expect("a regex node is an object");
    if let Some(c) = o.get("lit") {
        Node::Lit(char::from_u32(c.as_u64().unwrap() as u32).expect("a code point"))
    } else if let Some(i) = o.get("set") {
        Node::Set(i.as_u64().unwrap() as usize)
    } else if let Some(r) = o.get("rep") {
        let max = r[1].as_i64().unwrap();
        Node::Rep {
            min: r[0].as_u64().unwrap() as usize,
            max: if max < 0 { usize::MAX } else { max as usize },
            sub: parse_seq(&r[2], sets),
        }
    } else if let Some(bs) = o.get("alt") {
        let branches = bs.as_array().unwrap().iter().map(|b| parse_seq(b, sets));
        Node::Alt(Alt::new(branches.collect(), sets))
    } else if let Some(l) = o.get("look") {
        let sub = parse_seq(&l[2], sets);
        let behind = (l[0].as_i64().unwrap() < 0)
            .then(|| width(&sub).expect("Python only allows fixed-width lookbehind"));
        Node::Look {
            behind,
            neg: l[1].as_bool().unwrap(),
            sub,
        }
    } else if o.contains_key("bol") {
        Node::Bol
    } else if o.contains_key("eol") {
        Node::Eol
    } else {
        panic!("unknown regex node {v}")
    }
}

/// The fixed width of a sequence in characters, if it has one.
fn width(nodes: &[Node]) -> Option<usize> {
    nodes.iter().try_fold(0, |acc, n| {
        let w = match n {
            Node::Lit(_) | Node::Set(_) => 1,
            Node::Bol | Node::Eol | Node::Look { .. } => 0,
            Node::Rep { min, max, sub } if min == max => min * width(sub)?,
            Node::Rep { .. } => return None,
            Node::Alt(a) => {
                let w = width(a.branches.first()?)?;
                if a.branches.iter().any(|b| width(b) != Some(w)) {
                    return None;
                }
                w
            }
        };
        Some(acc + w)
    })
}

/// The characters a sequence's first consumed character can be, or `None`
/// when it may match without consuming one first (lookarounds and anchors
/// are zero-width and are skipped over; the check they make still runs).
fn first_of(nodes: &[Node], sets: &Sets) -> Option<First> {
    for n in nodes {
        match n {
            Node::Lit(c) => {
                let c = *c as u32;
                return Some(if c < 128 {
                    First {
                        ascii: 1 << c,
                        non_ascii: false,
                    }
                } else {
                    First {
                        ascii: 0,
                        non_ascii: true,
                    }
                });
            }
            Node::Set(i) => {
                let s = &sets[*i];
                return Some(First {
                    ascii: s.ascii,
                    non_ascii: s.has_non_ascii(),
                });
            }
            Node::Bol | Node::Eol | Node::Look { .. } => continue,
            Node::Rep { min, sub, .. } if *min >= 1 => return first_of(sub, sets),
            Node::Alt(a) => {
                let mut f = First {
                    ascii: 0,
                    non_ascii: false,
                };
                for b in &a.branches {
                    let g = first_of(b, sets)?;
                    f.ascii |= g.ascii;
                    f.non_ascii |= g.non_ascii;
                }
                return Some(f);
            }
            Node::Rep { .. } => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lit(s: &str) -> Vec<Value> {
        s.chars().map(|c| json!({"lit": c as u32})).collect()
    }

    #[test]
    fn leftmost_first_alternation_and_greedy_repeat() {
        let sets = vec![CharSet::from_ranges(vec![(b'0' as u32, b'9' as u32)])];
        // "a|ab" on "ab": Python takes "a" (first alternative), not the longest.
        let re = Regex::from_json(&json!([{"alt": [lit("a"), lit("ab")]}]), &sets);
        let s: Vec<char> = "ab".chars().collect();
        assert_eq!(re.search(&sets, &s), Some((0, 1)));
        // "\d+$" searched: leftmost start wins, greedy to the end.
        let re = Regex::from_json(
            &json!([{"rep": [1, -1, [{"set": 0}]]}, {"eol": true}]),
            &sets,
        );
        let s: Vec<char> = "ab123".chars().collect();
        assert_eq!(re.search(&sets, &s), Some((2, 5)));
        assert_eq!(re.search(&sets, &"12a".chars().collect::<Vec<_>>()), None);
    }

    #[test]
    fn lookarounds() {
        let sets = vec![CharSet::from_ranges(vec![(b'0' as u32, b'9' as u32)])];
        // (?<=\d)-(?=\d)
        let re = Regex::from_json(
            &json!([{"look": [-1, false, [{"set": 0}]]}, {"lit": 45}, {"look": [1, false, [{"set": 0}]]}]),
            &sets,
        );
        let s: Vec<char> = "a-1 2-3 4-b".chars().collect();
        assert_eq!(re.find_iter(&sets, &s), vec![(5, 6)]);
        // \+(?!\d)
        let re = Regex::from_json(
            &json!([{"lit": 43}, {"look": [1, true, [{"set": 0}]]}]),
            &sets,
        );
        assert_eq!(re.match_at(&sets, &['+', 'a'], 0), Some(1));
        assert_eq!(re.match_at(&sets, &['+', '1'], 0), None);
    }
}
