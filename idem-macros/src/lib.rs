//! `#[idempotent]`: makes an actix-web handler idempotent by declaration.
//!
//! Use it through the `idem` crate (`use idem::idempotent;`), which documents every option.
//! Every option is checked at compile time; a bad value is an error pointing at it.

mod args;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Makes an `async fn` actix-web handler idempotent: requests carrying the same
/// `Idempotency-Key` run the handler once, and every retry gets the first response back.
///
/// ```ignore
/// #[post("/payments")]
/// #[idempotent(ttl = "24h", guarantee = "strict", on_conflict = "retry_after")]
/// async fn create(body: web::Json<NewPayment>) -> impl Responder { /* … */ }
/// ```
///
/// Options: `ttl`, `lease`, `guarantee`, `on_conflict` (with `wait_timeout` for `wait` and
/// `respond_async_after` for `accepted`), `required`, `on_store_error`, `max_body`, `store`,
/// `fingerprint` (with `guarantee = "semantic"`), `replay_headers`, `crate`.
/// See the `idem` crate documentation for what each means.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let parsed: Result<syn::ItemFn, _> = syn::parse2(item2.clone());
    let args = args::Args::parse(attr.into());
    let result = match parsed {
        Ok(func) => {
            let shape = validate::fn_shape(&func.sig);
            match (args, shape) {
                (Ok(args), Ok(())) => return expand::expand(&args, func).into(),
                (Err(mut a), Err(b)) => {
                    a.combine(b);
                    a
                }
                (Err(e), _) | (_, Err(e)) => e,
            }
        }
        Err(e) => syn::Error::new(e.span(), "`#[idempotent]` goes on an `async fn` handler"),
    };
    // Keep the user's item so IDEs and later errors still see it.
    let err = result.to_compile_error();
    quote::quote!(#item2 #err).into()
}
