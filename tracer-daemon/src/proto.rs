//! Types generated from `proto/spool.proto`: the spool's entries and the
//! task state a restarted daemon continues from.

include!(concat!(env!("OUT_DIR"), "/roar_node.spool.v1.rs"));
