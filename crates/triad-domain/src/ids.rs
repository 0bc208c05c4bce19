//! Deterministic identifiers.
//!
//! An event id is a UUIDv5 of its causation (input topic, partition, offset) and its output
//! index among the events that input produced. Re-processing the same input after a crash, a
//! rebalance or by a zombie instance therefore yields the same ids, and consumers recognise
//! the copies as duplicates.

use uuid::Uuid;

use crate::Causation;

/// The UUIDv5 namespace of TRIAD event ids (a fixed random UUID; never change it, or every
/// re-processed input would get new ids).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x5d1f_3c2a_8e7b_4b9c_a6d4_2f0e_91b3_c7a8);

/// The id of the `index`-th event produced from the input named by `causation`.
pub fn derive_event_id(causation: &Causation, index: u32) -> String {
    // A length-prefixed encoding, so that no two distinct (topic, partition, offset, index)
    // tuples share a byte string.
    let topic = causation.topic.as_bytes();
    let mut name = Vec::with_capacity(topic.len() + 24);
    name.extend_from_slice(&(topic.len() as u64).to_be_bytes());
    name.extend_from_slice(topic);
    name.extend_from_slice(&causation.partition.to_be_bytes());
    name.extend_from_slice(&causation.offset.to_be_bytes());
    name.extend_from_slice(&index.to_be_bytes());
    Uuid::new_v5(&EVENT_NAMESPACE, &name).to_string()
}

/// A fresh random command id for a command entering at the edge.
pub fn new_command_id() -> String {
    Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn causation(topic: &str, partition: i32, offset: i64) -> Causation {
        Causation {
            command_id: None,
            topic: topic.to_owned(),
            partition,
            offset,
        }
    }

    #[test]
    fn same_input_same_id() {
        let c = causation("triad.workflow-inbox", 3, 42);
        assert_eq!(derive_event_id(&c, 0), derive_event_id(&c.clone(), 0));
    }

    #[test]
    fn id_is_a_v5_uuid() {
        let id = derive_event_id(&causation("t", 0, 0), 0);
        let parsed = Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
    }

    proptest! {
        #[test]
        fn distinct_inputs_distinct_ids(
            t1 in "[a-z.]{1,8}", p1 in 0i32..4, o1 in 0i64..1000, i1 in 0u32..4,
            t2 in "[a-z.]{1,8}", p2 in 0i32..4, o2 in 0i64..1000, i2 in 0u32..4,
        ) {
            prop_assume!((&t1, p1, o1, i1) != (&t2, p2, o2, i2));
            prop_assert_ne!(
                derive_event_id(&causation(&t1, p1, o1), i1),
                derive_event_id(&causation(&t2, p2, o2), i2)
            );
        }
    }
}
