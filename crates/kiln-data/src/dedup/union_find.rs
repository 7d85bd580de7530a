//! Union-find (disjoint sets) with path halving; the root of a set is always
//! its smallest element, so "keep the root" keeps the earliest document.

pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
        }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    pub fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi as usize] = lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_smallest_members() {
        let mut u = UnionFind::new(6);
        u.union(4, 5);
        u.union(5, 2);
        u.union(1, 3);
        assert_eq!(u.find(4), 2);
        assert_eq!(u.find(5), 2);
        assert_eq!(u.find(3), 1);
        assert_eq!(u.find(0), 0);
        u.union(3, 4);
        assert_eq!(u.find(5), 1);
    }
}
