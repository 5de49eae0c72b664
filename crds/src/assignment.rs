//! Which of the event topic's partitions each stream replica reads: the contract between the
//! operator (which gives each replica its ordinal and reports the plan in status) and the
//! stream job (which reads its partitions).
//!
//! Replica `i` of `n` (a StatefulSet ordinal and its replica count) reads every partition `p`
//! with `p % n == i`: the replicas' sets are disjoint and together cover the topic, and no two
//! differ in size by more than one. A replica that dies comes back with its ordinal and
//! resumes its partitions from their checkpoints (the group's committed offsets); a change of
//! `n` moves partitions between replicas, each resuming where the group left it.

use std::fmt;

/// One replica's place among the stream job's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    replica: u32,
    replicas: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("stream replicas must be at least 1")]
    NoReplicas,
    #[error("stream replica {replica} does not exist among {replicas} replicas (ordinals 0 to {})", replicas - 1)]
    OutOfRange { replica: u32, replicas: u32 },
}

impl Assignment {
    /// One replica reading every partition.
    pub const ALL: Assignment = Assignment {
        replica: 0,
        replicas: 1,
    };

    pub fn new(replica: u32, replicas: u32) -> Result<Self, AssignmentError> {
        if replicas == 0 {
            return Err(AssignmentError::NoReplicas);
        }
        if replica >= replicas {
            return Err(AssignmentError::OutOfRange { replica, replicas });
        }
        Ok(Self { replica, replicas })
    }

    pub fn replica(&self) -> u32 {
        self.replica
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Whether this replica reads `partition`.
    pub fn owns(&self, partition: u32) -> bool {
        partition % self.replicas == self.replica
    }

    /// This replica's partitions of a topic with `partitions`, ascending.
    pub fn partitions(&self, partitions: u32) -> Vec<u32> {
        (self.replica..partitions).step_by(self.replicas as usize).collect()
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica {} of {}", self.replica, self.replicas)
    }
}

/// Every replica's partitions, replica by replica (what the operator reports in status).
pub fn plan(replicas: u32, partitions: u32) -> Vec<Vec<u32>> {
    (0..replicas)
        .map(|r| Assignment { replica: r, replicas }.partitions(partitions))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_share_every_partition_once_and_evenly() {
        for replicas in 1..=12 {
            for partitions in 0..=40 {
                let plan = plan(replicas, partitions);
                let mut seen = vec![0; partitions as usize];
                for (r, parts) in plan.iter().enumerate() {
                    let a = Assignment::new(r as u32, replicas).unwrap();
                    assert!(parts.windows(2).all(|w| w[0] < w[1]), "ascending");
                    for &p in parts {
                        assert!(a.owns(p));
                        seen[p as usize] += 1;
                    }
                    assert_eq!(
                        parts.len(),
                        (0..partitions).filter(|&p| a.owns(p)).count(),
                        "owns and partitions agree"
                    );
                }
                assert!(seen.iter().all(|&n| n == 1), "{replicas}/{partitions}: {seen:?}");
                let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{replicas}/{partitions}: {sizes:?}");
            }
        }
    }

    #[test]
    fn a_replica_outside_the_set_is_refused_with_its_numbers() {
        assert_eq!(Assignment::new(0, 0), Err(AssignmentError::NoReplicas));
        let e = Assignment::new(2, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stream replica 2 does not exist among 2 replicas (ordinals 0 to 1)"
        );
        assert_eq!(Assignment::ALL.partitions(3), vec![0, 1, 2]);
        assert_eq!(Assignment::new(1, 3).unwrap().partitions(8), vec![1, 4, 7]);
    }
}
