//! The request body the benchmarks send.

/// A JSON body of about `size` bytes: an amount, a currency and a list of line items.
pub fn body(size: usize) -> Vec<u8> {
    let mut s = String::from("{\"amount\":1000,\"currency\":\"EUR\",\"items\":[");
    let mut i = 0;
    while s.len() + 40 < size {
        s.push_str(&format!(
            "{{\"sku\":\"item-{i:06}\",\"qty\":{}}},",
            i % 7 + 1
        ));
        i += 1;
    }
    s.push_str("{\"sku\":\"last\",\"qty\":1}]}");
    s.into_bytes()
}
