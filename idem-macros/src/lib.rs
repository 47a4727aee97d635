//! `#[idempotent]`: makes an actix-web handler idempotent by declaration; `policy!`: the same
//! options for the tower layer.
//!
//! Use it through the `idem` crate (`use idem::idempotent;`), which documents every option.
//! Every option is checked at compile time; a bad value is an error pointing at it.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod args;
mod expand;
mod options;
mod policy;
mod rules;
mod validate;
mod values;

use proc_macro::TokenStream;

/// Makes an `async fn` actix-web handler idempotent: requests carrying the same
/// `Idempotency-Key` run the handler once, and every retry gets the first response back.
///
/// ```ignore
/// // Not a doctest here: a proc-macro crate cannot depend on `idem`, which re-exports this
/// // attribute with every option documented and its examples compiled as doctests.
/// #[post("/payments")]
/// #[idempotent(name = "payments.create", ttl = "24h", on_conflict = "retry_after")]
/// async fn create(body: web::Json<NewPayment>) -> impl Responder { /* … */ }
/// ```
///
/// Use it as `idem::idempotent`; its documentation there lists every option.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let attr2: proc_macro2::TokenStream = attr.into();
    let parsed: Result<syn::ItemFn, _> = syn::parse2(item2.clone());
    let args = args::Args::parse(attr2.clone());
    let result = match parsed {
        Ok(func) => {
            let shape = validate::fn_shape(&func.sig);
            let args = args.and_then(|args| {
                validate::steps_guarantee(args.guarantee, &func.sig).map(|()| args)
            });
            match (args, shape) {
                (Ok(args), Ok(())) => {
                    if let Some(first) = expand::utoipa_first(&args, attr2, &func) {
                        return first.into();
                    }
                    return expand::expand(&args, func).into();
                }
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

/// One endpoint's policy for the tower layer (`idem::tower::IdempotencyLayer`), from the same
/// options as `#[idempotent]`, checked the same way at compile time; a `&'static Policy`.
/// `name` is required.
///
/// Use it as `idem::policy!`; its documentation there has an example.
#[proc_macro]
pub fn policy(input: TokenStream) -> TokenStream {
    policy::expand(input.into()).into()
}
