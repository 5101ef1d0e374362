//! Export macros behind `switchyard_sdk::export_destination!`, `export_source!` and
//! `export_transform!`.
//!
//! They generate the world's export glue inside the plugin crate (a component exports from the
//! crate that is compiled to it), pointing wit-bindgen at the SDK's own copy of the contract and
//! reusing every type and import the SDK already generated, so that the SDK's types are the ones
//! a plugin sees.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Type};

/// The contract folder, found beside this crate at build time.
const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");

// The `with` keys below name the contract's and WASI's package versions; they change together
// with `plugin-sdk/wit` (a test in switchyard-sdk builds a plugin, so a mismatch fails there).

fn generate(world: &str, ty: &Type, kind: proc_macro2::TokenStream) -> TokenStream {
    let glue = match world {
        "destination" => quote! {
            impl __switchyard_bindings::exports::switchyard::plugin::delivery::Guest for __SwitchyardExport {
                fn deliver(
                    config: ::switchyard_sdk::PluginConfig,
                    action: ::switchyard_sdk::Action,
                    batch: ::std::vec::Vec<::switchyard_sdk::OutboundRecord>,
                ) -> ::std::result::Result<::std::vec::Vec<::switchyard_sdk::RecordResult>, ::switchyard_sdk::CallError> {
                    ::switchyard_sdk::__private::deliver::<#ty>(config, action, batch)
                }
            }
        },
        "transform" => quote! {
            impl __switchyard_bindings::exports::switchyard::plugin::transformation::Guest for __SwitchyardExport {
                fn transform(
                    config: ::switchyard_sdk::PluginConfig,
                    batch: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::result::Result<::std::vec::Vec<::switchyard_sdk::TransformResult>, ::switchyard_sdk::CallError> {
                    ::switchyard_sdk::__private::transform::<#ty>(config, batch)
                }
            }
        },
        _ => quote! {
            impl __switchyard_bindings::exports::switchyard::plugin::intake::Guest for __SwitchyardExport {
                fn streams(
                    config: ::switchyard_sdk::PluginConfig,
                ) -> ::std::result::Result<::std::vec::Vec<::switchyard_sdk::StreamInfo>, ::switchyard_sdk::CallError> {
                    ::switchyard_sdk::__private::streams::<#ty>(config)
                }
                fn read(
                    config: ::switchyard_sdk::PluginConfig,
                    stream: ::std::string::String,
                    cursor: ::std::option::Option<::std::string::String>,
                ) -> ::std::result::Result<::switchyard_sdk::Page, ::switchyard_sdk::CallError> {
                    ::switchyard_sdk::__private::read::<#ty>(config, stream, cursor)
                }
                fn webhook(
                    config: ::switchyard_sdk::PluginConfig,
                    request: ::switchyard_sdk::WebhookRequest,
                ) -> ::std::result::Result<::switchyard_sdk::WebhookOutcome, ::switchyard_sdk::WebhookError> {
                    ::switchyard_sdk::__private::webhook::<#ty>(config, request)
                }
            }
        },
    };
    let world_name = format!("switchyard:plugin/{world}");
    quote! {
        #[doc(hidden)]
        mod __switchyard_bindings {
            ::switchyard_sdk::__private::wit_bindgen::generate!({
                path: #WIT_DIR,
                world: #world_name,
                runtime_path: "::switchyard_sdk::__private::wit_bindgen::rt",
                with: {
                    "switchyard:plugin/types@1.1.0": ::switchyard_sdk::bindings::switchyard::plugin::types,
                    "switchyard:plugin/host@1.1.0": ::switchyard_sdk::bindings::switchyard::plugin::host,
                    "wasi:http/types@0.2.12": ::switchyard_sdk::bindings::wasi::http::types,
                    "wasi:http/outgoing-handler@0.2.12": ::switchyard_sdk::bindings::wasi::http::outgoing_handler,
                    "wasi:io/error@0.2.12": ::switchyard_sdk::bindings::wasi::io::error,
                    "wasi:io/poll@0.2.12": ::switchyard_sdk::bindings::wasi::io::poll,
                    "wasi:io/streams@0.2.12": ::switchyard_sdk::bindings::wasi::io::streams,
                    "wasi:clocks/wall-clock@0.2.12": ::switchyard_sdk::bindings::wasi::clocks::wall_clock,
                    "wasi:clocks/monotonic-clock@0.2.12": ::switchyard_sdk::bindings::wasi::clocks::monotonic_clock,
                    "wasi:random/random@0.2.12": ::switchyard_sdk::bindings::wasi::random::random,
                },
            });
        }

        #[doc(hidden)]
        struct __SwitchyardExport;

        impl __switchyard_bindings::exports::switchyard::plugin::plugin::Guest for __SwitchyardExport {
            fn manifest() -> ::switchyard_sdk::PluginManifest {
                ::switchyard_sdk::__private::manifest::<#ty>(
                    #kind,
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }
            fn check(config: ::switchyard_sdk::PluginConfig) -> ::std::result::Result<(), ::switchyard_sdk::CallError> {
                ::switchyard_sdk::__private::check::<#ty>(config)
            }
        }

        #glue

        /// The plugin API version this plugin was built against, read by `switchyard plugin install`.
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[unsafe(link_section = "switchyard:api-version")]
        static __SWITCHYARD_API_VERSION: [u8; ::switchyard_sdk::API_VERSION.len()] =
            ::switchyard_sdk::__private::api_version_bytes();

        __switchyard_bindings::export!(__SwitchyardExport with_types_in __switchyard_bindings);
    }
    .into()
}

/// Exports a type implementing `switchyard_sdk::Destination` as the plugin's `destination` world.
#[proc_macro]
pub fn export_destination(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Type);
    generate(
        "destination",
        &ty,
        quote!(::switchyard_sdk::PluginKind::Destination),
    )
}

/// Exports a type implementing `switchyard_sdk::Source` as the plugin's `source` world.
#[proc_macro]
pub fn export_source(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Type);
    generate("source", &ty, quote!(::switchyard_sdk::PluginKind::Source))
}

/// Exports a type implementing `switchyard_sdk::Transform` as the plugin's `transform` world
/// (plugin API 1.1.0 and later).
#[proc_macro]
pub fn export_transform(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Type);
    generate(
        "transform",
        &ty,
        quote!(::switchyard_sdk::PluginKind::Transform),
    )
}
