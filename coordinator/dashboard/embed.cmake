# Writes OUT: a C++ source holding the dashboard's files as string constants.
# Run at build time (add_custom_command), so editing a page rebuilds one file.
file(READ ${SRC}/index.html html)
file(READ ${SRC}/app.js js)
file(READ ${SRC}/style.css css)
file(WRITE ${OUT}.tmp "// Generated from coordinator/dashboard/ by embed.cmake; do not edit.\n"
     "#include \"coordinator/dashboard_assets.h\"\n"
     "namespace dfc {\n"
     "const char* const kDashboardHtml = R\"DFC_ASSET(${html})DFC_ASSET\";\n"
     "const char* const kDashboardJs = R\"DFC_ASSET(${js})DFC_ASSET\";\n"
     "const char* const kDashboardCss = R\"DFC_ASSET(${css})DFC_ASSET\";\n"
     "}  // namespace dfc\n")
file(RENAME ${OUT}.tmp ${OUT})
