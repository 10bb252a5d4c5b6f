//! `Factorial`: exact n! as decimal digits.
//!
//! malachite computes n! by prime-swing and converts to decimal with a sub-quadratic
//! algorithm; together they run 100000! in about GMP's time (see docs/benchmarks.md),
//! where num-bigint-style crates spend most of their time in the decimal conversion.

use malachite_base::num::arithmetic::traits::Factorial;
use malachite_nz::natural::Natural;

/// The default upper bound for `n`; 100000! has 456,574 digits.
pub const DEFAULT_MAX_FACTORIAL_N: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactorialError {
    #[error("n must be >= 0, got {0}")]
    Negative(i64),
    #[error("n must be <= {max} (max_factorial_n), got {n}")]
    TooLarge { n: i64, max: u64 },
}

/// Checks `n` against `0..=max` before any work is done.
pub fn validate(n: i64, max: u64) -> Result<u64, FactorialError> {
    let unsigned = u64::try_from(n).map_err(|_| FactorialError::Negative(n))?;
    if unsigned > max {
        return Err(FactorialError::TooLarge { n, max });
    }
    Ok(unsigned)
}

/// Returns the decimal digits of `n!` for `0 <= n <= max`.
pub fn factorial_decimal(n: i64, max: u64) -> Result<String, FactorialError> {
    let n = validate(n, max)?;
    Ok(Natural::factorial(n).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values() {
        let max = DEFAULT_MAX_FACTORIAL_N;
        assert_eq!(factorial_decimal(0, max).as_deref(), Ok("1"));
        assert_eq!(factorial_decimal(1, max).as_deref(), Ok("1"));
        assert_eq!(factorial_decimal(6, max).as_deref(), Ok("720"));
        assert_eq!(
            factorial_decimal(20, max).as_deref(),
            Ok("2432902008176640000")
        );
        assert_eq!(
            factorial_decimal(25, max).as_deref(),
            Ok("15511210043330985984000000")
        );
    }

    #[test]
    fn hundred_factorial_is_exact() {
        let digits = factorial_decimal(100, DEFAULT_MAX_FACTORIAL_N).unwrap();
        assert_eq!(digits.len(), 158);
        assert!(digits.starts_with("93326215443944152681"));
        assert!(digits.ends_with(&"0".repeat(24)));
    }

    #[test]
    fn limit_is_inclusive_and_named() {
        assert!(factorial_decimal(10, 10).is_ok());
        let err = factorial_decimal(11, 10).unwrap_err();
        assert_eq!(err, FactorialError::TooLarge { n: 11, max: 10 });
        assert!(err.to_string().contains("max_factorial_n"));
        assert!(err.to_string().contains("10"));
    }

    #[test]
    fn negative_is_rejected() {
        assert_eq!(
            factorial_decimal(-5, 100),
            Err(FactorialError::Negative(-5))
        );
        assert_eq!(
            factorial_decimal(i64::MIN, u64::MAX),
            Err(FactorialError::Negative(i64::MIN))
        );
    }

    #[test]
    fn max_default_has_known_digit_count() {
        let digits = factorial_decimal(100_000, DEFAULT_MAX_FACTORIAL_N).unwrap();
        assert_eq!(digits.len(), 456_574);
        assert!(digits.starts_with("28242294079603478742"));
    }
}
