// Builds the page into dist/ (index.html + assets/), which the collector
// embeds and serves at `/` and `/assets/*`. Routing is by the URL's hash, so
// the server needs no other paths. `npm run dev` serves the page with /api
// proxied to a running collector or `etcdmon up` (ETCDMON_API, default
// http://127.0.0.1:8080).
import { defineConfig } from "vite";

const api = process.env.ETCDMON_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  base: "/",
  esbuild: {
    jsx: "automatic",
    jsxImportSource: "preact",
    // No licence comments scattered through the bundle; the build stays small.
    legalComments: "none",
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2020",
    sourcemap: false,
    // One script and one stylesheet: the page is small, and fewer requests
    // render sooner.
    cssCodeSplit: false,
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
    rollupOptions: {
      output: {
        entryFileNames: "assets/index-[hash].js",
        chunkFileNames: "assets/[name]-[hash].js",
        assetFileNames: "assets/[name]-[hash][extname]",
      },
    },
  },
  server: {
    proxy: {
      "/api": {
        target: api,
        changeOrigin: true,
        // The proxy holds a response's headers until its first body byte; an
        // event stream's first byte may come 15 s later. Send them at once.
        configure: (proxy) => {
          proxy.on("proxyRes", (proxyRes, _req, res) => {
            if (String(proxyRes.headers["content-type"] ?? "").startsWith("text/event-stream")) {
              setImmediate(() => res.flushHeaders());
            }
          });
        },
      },
    },
  },
});
