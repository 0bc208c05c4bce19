//! Any bytes given to the wire-format split and the Avro decoder must give a value or an
//! error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triad_codec::{Catalog, decode_datum, wire};
use triad_domain::{InboxRecord, WorkflowEvent};

fuzz_target!(|data: &[u8]| {
    apache_avro_cap();
    let Ok(catalog) = Catalog::load() else { return };
    if let Ok((_, body)) = wire::split(data) {
        if let Ok(schema) = catalog.schema::<InboxRecord>() {
            let _ = decode_datum::<InboxRecord>(1, schema, None, body);
        }
        if let Ok(schema) = catalog.schema::<WorkflowEvent>() {
            let _ = decode_datum::<WorkflowEvent>(1, schema, None, body);
        }
    }
});

fn apache_avro_cap() {
    triad_codec::set_max_allocation_bytes(1 << 20);
}
