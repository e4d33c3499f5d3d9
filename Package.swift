// swift-tools-version:6.0
import PackageDescription

// Ketenpoort: a privacy-aware data-exchange gateway.
// Layout (see docs/architecture.md): C system libraries in `C*` targets with shim headers,
// pure logic in `KetenpoortCore` / `KetenpoortPolicy`, I/O at the edges (`KetenpoortTLS`,
// `KetenpoortServer`, `KetenpoortStore`), and an executable that only wires.
let strict: [SwiftSetting] = []

let package = Package(
    name: "Ketenpoort",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ketenpoort", targets: ["ketenpoort"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // System libraries: the distribution's OpenSSL 3 and SQLite 3.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"]), .brew(["openssl@3"])]
        ),
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"]), .brew(["sqlite"])]
        ),

        .systemLibrary(
            name: "CPostgres",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"]), .brew(["libpq"])]
        ),

        // Pure: errors, identifiers (BSN, OIN), no I/O.
        .target(name: "KetenpoortCore", swiftSettings: strict),

        // Pure: the policy language, validator, compiler and evaluator. No I/O beyond reading
        // the policy files handed to the loader.
        .target(
            name: "KetenpoortPolicy",
            dependencies: ["KetenpoortCore", .product(name: "Yams", package: "Yams")],
            swiftSettings: strict
        ),

        // Cryptographic primitives over OpenSSL: HMAC, HKDF, AES-SIV, AES-GCM, Ed25519, keys.
        .target(
            name: "KetenpoortCrypto",
            dependencies: ["COpenSSL", "KetenpoortCore"],
            swiftSettings: strict
        ),

        // Storage: the system SQLite (the embedded default) and PostgreSQL through the system
        // libpq (several gateways on one database), behind one small SQL interface.
        .target(name: "KetenpoortStore", dependencies: ["CSQLite", "CPostgres", "KetenpoortCore"], swiftSettings: strict),

        // The tamper-evident audit log: hash chain and RFC 9162 Merkle tree over the store.
        .target(name: "KetenpoortAudit", dependencies: ["KetenpoortStore", "KetenpoortCrypto", "KetenpoortPolicy", "KetenpoortCore"], swiftSettings: strict),
        // Reports for privacy officers: the DPIA route map and the register of processing.
        .target(name: "KetenpoortReports", dependencies: ["KetenpoortAudit", "KetenpoortPolicy", "KetenpoortCore"], swiftSettings: strict),

        // Development PKI (PKIoverheid-shaped) generated through OpenSSL.
        .target(
            name: "KetenpoortPKI",
            dependencies: ["COpenSSL", "KetenpoortCore"],
            swiftSettings: strict
        ),

        // Mutual TLS: a SwiftNIO channel handler driving OpenSSL through memory BIOs.
        .target(
            name: "KetenpoortTLS",
            dependencies: [
                "COpenSSL", "KetenpoortCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // The gateway: configuration, HTTP/1.1 over the TLS handler, routing, metrics, lifecycle.
        .target(
            name: "KetenpoortServer",
            dependencies: [
                "KetenpoortCore", "KetenpoortTLS", "KetenpoortPolicy", "KetenpoortCrypto", "KetenpoortAudit", "KetenpoortStore", "KetenpoortReports",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),

        // Load generator over mutual TLS (the project's own OpenSSL client).
        .target(
            name: "KetenpoortBench",
            dependencies: [
                "KetenpoortTLS", "KetenpoortCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict
        ),

        // The one binary: wiring only.
        .executableTarget(
            name: "ketenpoort",
            dependencies: [
                "KetenpoortCore", "KetenpoortPolicy", "KetenpoortCrypto", "KetenpoortPKI",
                "KetenpoortTLS", "KetenpoortServer", "KetenpoortBench", "KetenpoortAudit", "KetenpoortReports", "KetenpoortStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        .testTarget(name: "KetenpoortCoreTests", dependencies: ["KetenpoortCore"]),
        .testTarget(
            name: "KetenpoortPolicyTests",
            dependencies: ["KetenpoortPolicy", "KetenpoortCore"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(name: "KetenpoortCryptoTests", dependencies: ["KetenpoortCrypto", "KetenpoortCore"]),
        .testTarget(name: "KetenpoortPKITests", dependencies: ["KetenpoortPKI", "KetenpoortCore"]),
        .testTarget(name: "KetenpoortStoreTests", dependencies: ["KetenpoortStore", "KetenpoortCore"]),
        .testTarget(name: "KetenpoortAuditTests", dependencies: ["KetenpoortAudit", "KetenpoortStore", "KetenpoortCrypto", "KetenpoortPolicy", "KetenpoortCore"]),
        .testTarget(
            name: "KetenpoortIntegrationTests",
            dependencies: [
                "KetenpoortCore", "KetenpoortTLS", "KetenpoortPKI", "KetenpoortServer", "KetenpoortBench", "KetenpoortPolicy",
                "KetenpoortCrypto", "KetenpoortAudit", "KetenpoortStore", "KetenpoortReports",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
