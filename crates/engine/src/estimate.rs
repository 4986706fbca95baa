pub struct Estimate;
pub fn estimate() {}
