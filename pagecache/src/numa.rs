//! NUMA topology: which CPUs belong to which node, read from
//! `/sys/devices/system/node`, with an emulation of N nodes on a one-node
//! machine so that the multi-node paths run in tests.
//!
//! Nodes are numbered densely (`0..node_count()`) in the order of their
//! sysfs ids; [`NodeInfo::id`] keeps the sysfs id.

use std::fs;
use std::io;
use std::path::Path;

/// Where Linux describes nodes.
pub const SYSFS_NODES: &str = "/sys/devices/system/node";

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id in sysfs (for emulated nodes, the dense index).
    pub id: u32,
    /// CPUs of the node, sorted.
    pub cpus: Vec<u32>,
}

/// The machine's nodes and the CPU to node map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<NodeInfo>,
    /// cpu number -> dense node index.
    cpu_node: Vec<u32>,
    emulated: bool,
}

/// Largest CPU or node id accepted.
const MAX_ID: u32 = 1 << 20;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses a kernel CPU or node list such as `0-3,8,10-11` (an empty list,
/// as a memory-only node has, is empty).
///
/// # Locking
/// None.
pub fn parse_list(s: &str) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        // Ids beyond 2^20 are not CPUs or nodes of any machine; refusing
        // them keeps the CPU map small whatever sysfs says.
        let num = |t: &str| match t.trim().parse::<u32>() {
            Ok(n) if n <= MAX_ID => Ok(n),
            Ok(n) => Err(bad(format!("id {n} too large in list {s:?}"))),
            Err(e) => Err(bad(format!("bad number {t:?} in list {s:?}: {e}"))),
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad(format!("bad range {part:?} in list {s:?}")));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Topology {
    /// Builds a topology from nodes (sorted by id, CPUs sorted).
    ///
    /// # Locking
    /// None.
    pub fn from_nodes(mut nodes: Vec<NodeInfo>, emulated: bool) -> Topology {
        if nodes.is_empty() {
            nodes.push(NodeInfo {
                id: 0,
                cpus: vec![0],
            });
        }
        nodes.sort_by_key(|n| n.id);
        let max_cpu = nodes
            .iter()
            .flat_map(|n| n.cpus.iter())
            .copied()
            .max()
            .unwrap_or(0);
        let mut cpu_node = vec![0u32; max_cpu as usize + 1];
        for (i, n) in nodes.iter_mut().enumerate() {
            n.cpus.sort_unstable();
            for &c in &n.cpus {
                cpu_node[c as usize] = i as u32;
            }
        }
        Topology {
            nodes,
            cpu_node,
            emulated,
        }
    }

    /// One node holding CPUs `0..ncpus`.
    ///
    /// # Locking
    /// None.
    pub fn single(ncpus: u32) -> Topology {
        Self::from_nodes(
            vec![NodeInfo {
                id: 0,
                cpus: (0..ncpus.max(1)).collect(),
            }],
            false,
        )
    }

    /// Reads `root` (normally [`SYSFS_NODES`]): the `online` list and each
    /// `nodeN/cpulist`.
    ///
    /// # Locking
    /// None (reads sysfs).
    pub fn from_sysfs(root: &Path) -> io::Result<Topology> {
        let online = fs::read_to_string(root.join("online"))?;
        let mut nodes = Vec::new();
        for id in parse_list(&online)? {
            let cpulist = fs::read_to_string(root.join(format!("node{id}")).join("cpulist"))?;
            nodes.push(NodeInfo {
                id,
                cpus: parse_list(&cpulist)?,
            });
        }
        if nodes.is_empty() {
            return Err(bad(format!("{}: no online node", root.display())));
        }
        Ok(Self::from_nodes(nodes, false))
    }

    /// The machine's topology; one node with every CPU if sysfs has none
    /// (containers, non-NUMA kernels).
    ///
    /// # Locking
    /// None (reads sysfs).
    pub fn detect() -> Topology {
        Self::from_sysfs(Path::new(SYSFS_NODES)).unwrap_or_else(|_| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            Self::single(n as u32)
        })
    }

    /// On a one-node topology, `n` emulated nodes with the CPUs split into
    /// contiguous, nearly equal groups (nodes beyond the CPU count have
    /// none). A real multi-node topology, or `n <= 1`, is kept as it is.
    ///
    /// # Locking
    /// None.
    pub fn emulate(self, n: usize) -> Topology {
        if n <= 1 || self.nodes.len() != 1 {
            return self;
        }
        let cpus = &self.nodes[0].cpus;
        let nodes = (0..n)
            .map(|i| NodeInfo {
                id: i as u32,
                cpus: cpus
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k * n / cpus.len() == i)
                    .map(|(_, &c)| c)
                    .collect(),
            })
            .collect();
        Self::from_nodes(nodes, true)
    }

    /// Number of nodes.
    ///
    /// # Locking
    /// None.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes, by dense index.
    ///
    /// # Locking
    /// None.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Whether the nodes are emulated.
    ///
    /// # Locking
    /// None.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// Dense node index of `cpu` (node 0 for a CPU we do not know).
    ///
    /// # Locking
    /// None.
    pub fn node_of_cpu(&self, cpu: u32) -> usize {
        self.cpu_node.get(cpu as usize).map_or(0, |&n| n as usize)
    }

    /// Dense node index of the CPU the calling thread runs on now (it may
    /// migrate right after; the answer is a placement hint).
    ///
    /// # Locking
    /// None (one `sched_getcpu` call).
    pub fn current_node(&self) -> usize {
        current_cpu().map_or(0, |c| self.node_of_cpu(c))
    }
}

/// The CPU the calling thread runs on.
///
/// # Locking
/// None (one `sched_getcpu` call).
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and only reads thread state.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(
            parse_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_list("\n").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_list("5").unwrap(), vec![5]);
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("x").is_err());
        assert!(parse_list("4000000000").is_err());
    }
}
