//! Any message on the bus through `Envelope::decode` and
//! `decode_verified`: no panic; what decodes is consistent, re-encodes to an
//! envelope that decodes the same, and verifies once signed.
#![no_main]

use confab_protocol::{BusKey, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = BusKey::new(b"fuzz-bus-secret-0123456789abcdef");
    let verified = Envelope::decode_verified(data, Some(&key));
    let Ok(env) = Envelope::decode(data) else {
        assert!(verified.is_err(), "verified what does not decode");
        return;
    };
    if let Ok(v) = verified {
        assert_eq!(v, env);
    }
    assert!(env.header.seq >= 1);
    assert!(env.event.starts_with('{'));
    let text = env.header.encode(&env.event);
    let again = Envelope::decode(text.as_bytes()).expect("a decoded envelope re-encodes");
    assert_eq!(again, env);
    let signed = env.header.encode_signed(&env.event, Some(&key));
    let checked = Envelope::decode_verified(signed.as_bytes(), Some(&key))
        .expect("a signed envelope verifies");
    assert_eq!(checked, env);
    let other = BusKey::new(b"another-fuzz-secret-0123456789ab");
    assert!(Envelope::decode_verified(signed.as_bytes(), Some(&other)).is_err());
});
