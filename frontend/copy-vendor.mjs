// Copies the OpenAPI UI (swagger-ui-dist) into the build so /docs needs no CDN.
import { copyFileSync, mkdirSync } from "node:fs";

const from = "node_modules/swagger-ui-dist";
const to = "../lattice/dashboard/static/vendor";
mkdirSync(to, { recursive: true });
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"]) {
  copyFileSync(`${from}/${name}`, `${to}/${name}`);
}
