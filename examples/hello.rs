fn main() {
    let v: Vec<u64> = (1..=10).map(|n| n * n).collect();
    println!("hello from rust: squares {:?}", v);
}
