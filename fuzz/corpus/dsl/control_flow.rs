fn guarded(b: u32, h: u32, q: u32, kv: u32, w: u32, sink: bool) -> bool {
    if kv > q {
        return false;
    }
    let near = if q - kv < w { true } else { q % 64 == kv % 64 };
    let shifted = (q >> 3) ^ (kv << 35);
    near || (sink && kv == 0) || (b + h) as u64 == shifted as u64 % 7
}
