import { defineConfig } from "vite";

// The head serves the build at /ui (lattice/dashboard/__init__.py STATIC_PATH) and index.html
// at /. The output is committed, so a checkout runs and tests without npm.
export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "../lattice/dashboard/static",
    emptyOutDir: true,
    assetsDir: "assets",
  },
});
